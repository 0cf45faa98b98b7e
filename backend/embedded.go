package backend

import (
	"context"
	"encoding/binary"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Handler answers one method.
type Handler func(ctx context.Context, req *Request) ([]byte, error)

// Embedded is the in-process backend: a method table of plain synchronous Go
// handlers. The default table answers "echo" (the body back) and "time" (the
// server's unix time in nanoseconds, 8 bytes big-endian), enough to test
// forwarding end to end, and, as a load-test fixture, "sleep" and any
// "sleep.<name>" (wait the number of milliseconds in the body, as decimal
// text, at most 10 s): a backend of known capacity, under method names that
// can carry different admission priorities.
type Embedded struct {
	mu       sync.RWMutex
	handlers map[string]Handler
	online   func(Presence)
	offline  func(Presence)
}

// NewEmbedded returns an embedded backend with the default methods.
func NewEmbedded() *Embedded {
	e := &Embedded{handlers: map[string]Handler{}}
	e.Handle("echo", func(_ context.Context, r *Request) ([]byte, error) {
		return append([]byte(nil), r.Body...), nil
	})
	e.Handle("time", func(context.Context, *Request) ([]byte, error) {
		return binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano())), nil
	})
	return e
}

// sleepHandler waits the milliseconds given in the body (decimal text).
func sleepHandler(ctx context.Context, r *Request) ([]byte, error) {
	ms, err := strconv.Atoi(strings.TrimSpace(string(r.Body)))
	if err != nil || ms < 0 || ms > 10000 {
		return nil, Logical(1002, "sleep: body must be 0..10000 (milliseconds)")
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Handle registers (or replaces) the handler for method. Goroutine-safe.
func (e *Embedded) Handle(method string, h Handler) {
	e.mu.Lock()
	e.handlers[method] = h
	e.mu.Unlock()
}

// OnPresence installs callbacks for presence events (for tests and embedders).
func (e *Embedded) OnPresence(online, offline func(Presence)) {
	e.mu.Lock()
	e.online, e.offline = online, offline
	e.mu.Unlock()
}

// Call implements Backend.
func (e *Embedded) Call(ctx context.Context, req *Request) ([]byte, error) {
	e.mu.RLock()
	h := e.handlers[req.Method]
	e.mu.RUnlock()
	if h == nil && (req.Method == "sleep" || strings.HasPrefix(req.Method, "sleep.")) {
		h = sleepHandler
	}
	if h == nil {
		return nil, ErrUnknownMethod(req.Method)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// Online implements Backend.
func (e *Embedded) Online(_ context.Context, p Presence) error {
	e.mu.RLock()
	f := e.online
	e.mu.RUnlock()
	if f != nil {
		f(p)
	}
	return nil
}

// Offline implements Backend.
func (e *Embedded) Offline(_ context.Context, p Presence) error {
	e.mu.RLock()
	f := e.offline
	e.mu.RUnlock()
	if f != nil {
		f(p)
	}
	return nil
}

// Close implements Backend.
func (e *Embedded) Close() error { return nil }
