package testutil

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

var build struct {
	sync.Once
	path string
	err  error
}

// Longlink returns the longlink binary, built from this module once per
// test process, for tests that run it as a child (a supervisor re-executes
// itself for its workers). It is left in a temporary directory of its own.
func Longlink(t testing.TB) string {
	t.Helper()
	build.Do(func() {
		dir, err := os.MkdirTemp("", "longlink-test-bin")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "longlink")
		if out, err := exec.Command("go", "build", "-o", build.path, "github.com/longlink/longlink/cmd/longlink").CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// Process is a child process a test started.
type Process struct {
	*exec.Cmd
	done chan struct{}
	err  error // how it exited, once done is closed
}

// Exited is closed once the process has exited; Err then says how.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Err is the process's exit error (nil for a clean exit) once Exited is
// closed.
func (p *Process) Err() error { return p.err }

// StartLonglink starts the longlink binary with args, HOME set to home
// and its stderr on the test's. At cleanup it gets SIGTERM (a drain) and,
// if it has not exited within 20 s, SIGKILL.
func StartLonglink(t testing.TB, home string, args ...string) *Process {
	t.Helper()
	p := &Process{Cmd: exec.Command(Longlink(t), args...), done: make(chan struct{})}
	p.Env = append(os.Environ(), "HOME="+home)
	p.Stderr = os.Stderr
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.Process.Kill()
			<-p.done
		}
	})
	return p
}

// WaitReady polls url until it answers 200, failing the test after timeout.
func WaitReady(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	hc := &http.Client{Timeout: time.Second}
	CheckFor(t, timeout, func() error {
		r, err := hc.Get(url)
		if err != nil {
			return fmt.Errorf("%s never became ready: %v", url, err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			return fmt.Errorf("%s never became ready: %s", url, r.Status)
		}
		return nil
	})
}

// MetaLeader returns the JetStream meta leader that the NATS monitor at
// addr (host:port) reports for a cluster of size servers, or "" while
// there is none (or the cluster is not yet that size).
func MetaLeader(hc *http.Client, addr string, size int) string {
	r, err := hc.Get("http://" + addr + "/jsz")
	if err != nil {
		return ""
	}
	defer r.Body.Close()
	var z struct {
		Meta *struct {
			Leader string `json:"leader"`
			Size   int    `json:"cluster_size"`
		} `json:"meta_cluster"`
	}
	if json.NewDecoder(r.Body).Decode(&z) != nil || z.Meta == nil || z.Meta.Size != size {
		return ""
	}
	return z.Meta.Leader
}
