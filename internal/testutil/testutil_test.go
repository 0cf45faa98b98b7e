package testutil

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fatalTB records Fatal and ends the goroutine, as testing's Fatal does,
// without failing the test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

// fatalOf runs fn with a fatalTB on a goroutine of its own and returns
// what it failed with ("" if it did not).
func fatalOf(t *testing.T, fn func(tb testing.TB)) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); fn(f) }()
	<-done
	return f.msg
}

func TestFreeAddrListens(t *testing.T) {
	ln, err := net.Listen("tcp", FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if p := FreePort(t); p <= 0 || p > 65535 {
		t.Fatalf("port %d", p)
	}
}

func TestCheckForAndWaitFor(t *testing.T) {
	n := 0
	CheckFor(t, 5*time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("%d tries", n)
	}
	start := time.Now()
	msg := fatalOf(t, func(tb testing.TB) { WaitFor(tb, "godot", 50*time.Millisecond, func() bool { return false }) })
	if msg != "timed out waiting for godot" || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("WaitFor failed with %q after %v", msg, time.Since(start))
	}
	if msg := fatalOf(t, func(tb testing.TB) {
		CheckFor(tb, 20*time.Millisecond, func() error { return errors.New("last error") })
	}); msg != "last error" {
		t.Fatalf("CheckFor failed with %q", msg)
	}
	if msg := fatalOf(t, func(tb testing.TB) { WaitFor(tb, "x", time.Second, func() bool { return true }) }); msg != "" {
		t.Fatalf("WaitFor of a true condition failed: %q", msg)
	}
}

func TestWaitReady(t *testing.T) {
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if asked.Add(1) < 3 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	WaitReady(t, srv.URL, 5*time.Second)
	if n := asked.Load(); n != 3 {
		t.Fatalf("ready after %d requests, want 3", n)
	}
}

// TestStartChromiumStopsItsGroup: once stop returns, nothing of Chromium's
// process group is left to write into its profile directory.
func TestStartChromiumStopsItsGroup(t *testing.T) {
	browser := FindChromium(t)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<p>hi</p>")) }))
	defer page.Close()
	cmd := chromiumCmd(t, t.Context(), browser, page.URL)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // its helpers started
	stopGroup(cmd)
	if !groupAlive(syscall.Getpgrp()) {
		t.Fatal("groupAlive does not see this test's own group")
	}
	if groupAlive(cmd.Process.Pid) {
		t.Fatal("a process of chromium's group is still alive after stop")
	}
	if out := RunChromium(t, browser, page.URL, "--dump-dom"); !strings.Contains(string(out), "<p>hi</p>") {
		t.Fatalf("dump-dom: %s", out)
	}
}
