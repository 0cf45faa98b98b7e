// Package testutil holds the helpers the tests of several packages share:
// free loopback addresses, polling with a deadline, a silent logger, the
// longlink binary built once per test process, and headless Chromium. It
// is imported by _test.go files only, never by production code. Every
// helper takes the test's testing.TB and fails or skips through it; all
// are safe to call from parallel tests.
package testutil

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

// FreeAddr returns a loopback "127.0.0.1:port" nothing listens on now, for
// a child process or server that must be told its address in advance
// (anything that can listen on port 0 itself should).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// FreePort is FreeAddr's port.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// pollEvery is how often CheckFor and WaitFor try again.
const pollEvery = 10 * time.Millisecond

// CheckFor polls fn until it returns nil, failing the test with fn's last
// error once timeout has passed.
func CheckFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(pollEvery)
	}
}

// WaitFor polls cond until it holds, failing the test ("timed out waiting
// for what") once timeout has passed.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	CheckFor(t, timeout, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("timed out waiting for %s", what)
	})
}

// Quiet is a logger that discards everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// SyncBuffer is a bytes.Buffer safe for concurrent writers (a logger, an
// event loop) and a reader; its zero value is empty and ready.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what has been written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
