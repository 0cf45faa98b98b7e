package push

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// natsLogger routes the embedded nats-server's log to slog (component=nats)
// and remembers what the hub must act on: a fatal start-up error (a taken
// port) and JetStream write errors (a full disk).
type natsLogger struct {
	log *slog.Logger

	mu       sync.Mutex
	fatal    error
	fatalCh  chan struct{}
	writeErr string // last "Critical write error"/out-of-space line since the last reset
}

func newNATSLogger(l *slog.Logger) *natsLogger {
	return &natsLogger{log: l.With("component", "nats"), fatalCh: make(chan struct{})}
}

// Noticef is the server's chatter (banner, listeners): debug here, the
// hub logs what matters in its own words.
func (l *natsLogger) Noticef(format string, v ...any) { l.out(slog.LevelDebug, format, v) }
func (l *natsLogger) Warnf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if strings.HasPrefix(msg, "Plaintext passwords detected") {
		// The role passwords are 256-bit HMAC outputs, not guessable
		// words: bcrypt would only slow every connect down.
		l.log.Debug(msg)
		return
	}
	l.noteWriteErr(msg)
	l.log.Warn(msg)
}
func (l *natsLogger) Debugf(format string, v ...any) { l.out(slog.LevelDebug, format, v) }
func (l *natsLogger) Tracef(format string, v ...any) { l.out(slog.LevelDebug-4, format, v) }

func (l *natsLogger) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.noteWriteErr(msg)
	l.log.Error(msg)
}

// noteWriteErr remembers a store write failure (the file store's "Critical
// write error", ENOSPC, JetStream out of resources) for the hub's probe.
func (l *natsLogger) noteWriteErr(msg string) {
	if strings.Contains(msg, "write error") || strings.Contains(msg, "no space left") || strings.Contains(msg, "out of") && strings.Contains(msg, "resources") {
		l.mu.Lock()
		l.writeErr = msg
		l.mu.Unlock()
	}
}

// Fatalf is a start-up failure (the listener could not be opened): the
// server does not exit the process, StartEmbedded returns it.
func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg, "fatal", true)
	l.mu.Lock()
	if l.fatal == nil {
		l.fatal = fmt.Errorf("%s", msg)
		close(l.fatalCh)
	}
	l.mu.Unlock()
}

func (l *natsLogger) out(lv slog.Level, format string, v []any) {
	if !l.log.Enabled(context.Background(), lv) {
		return
	}
	l.log.Log(context.Background(), lv, fmt.Sprintf(format, v...))
}

func (l *natsLogger) fatalErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}

// takeWriteErr returns and clears the last JetStream write error seen.
func (l *natsLogger) takeWriteErr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.writeErr
	l.writeErr = ""
	return s
}
