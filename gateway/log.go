package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// rateLimitedLog caps per-connection log lines (bad frames, rejected tokens)
// at perSec lines a second, so a flood of bad clients cannot flood the log;
// it reports how many lines it suppressed.
type rateLimitedLog struct {
	log        *slog.Logger
	perSec     int
	mu         sync.Mutex
	window     int64
	n          int
	suppressed int
}

func newRateLimitedLog(l *slog.Logger, perSec int) *rateLimitedLog {
	return &rateLimitedLog{log: l, perSec: perSec}
}

// Warn logs at warning level unless over the rate. Goroutine-safe.
func (r *rateLimitedLog) Warn(msg string, args ...any) {
	if !r.log.Enabled(context.Background(), slog.LevelWarn) {
		return
	}
	now := time.Now().Unix()
	r.mu.Lock()
	if now != r.window {
		if r.suppressed > 0 {
			r.log.Warn("per-connection log lines suppressed", "count", r.suppressed)
		}
		r.window, r.n, r.suppressed = now, 0, 0
	}
	r.n++
	ok := r.n <= r.perSec
	if !ok {
		r.suppressed++
	}
	r.mu.Unlock()
	if ok {
		r.log.Warn(msg, args...)
	}
}

// gnetLogger routes gnet's own logging to slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) {
	g.l.Error(fmt.Sprintf(f, a...), "component", "gnet")
	os.Exit(1)
}
