package supervisor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The helper processes below are this test binary run again: a supervisor
// (Run, starting this binary as its worker) and a worker that
// records how it stops. They run only when helperDirEnv is set.
const helperDirEnv = "LONGLINK_TEST_STOP_DIR"

func TestHelperStopSupervisor(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("helper process")
	}
	os.Exit(Run(Config{
		Workers: 1, DataDir: dir, ShutdownTimeout: 10 * time.Second,
		Args:   []string{"-test.run=^TestHelperStopWorker$", "--"}, // the supervisor's own flags follow, ignored
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}))
}

func TestHelperStopWorker(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("helper process")
	}
	log, err := os.OpenFile(filepath.Join(dir, "worker.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		os.Exit(2)
	}
	stop := WatchStop(slog.New(slog.NewTextHandler(io.Discard, nil)), true)
	fmt.Fprintf(log, "ready %d\n", os.Getpid())
	why := <-stop.Drain
	fmt.Fprintf(log, "drain %s\n", why)
	select { // an orderly drain takes a while; a second stop would cut it
	case <-stop.Now:
		fmt.Fprintln(log, "cut short")
		os.Exit(3)
	case <-time.After(1500 * time.Millisecond):
		fmt.Fprintln(log, "drained")
		os.Exit(0)
	}
}

// TestWorkerDrainsOnceWhenSupervisorDies kills the supervisor with SIGKILL
// and sends the worker a SIGTERM as well (what systemd or a terminal's
// process-group signal adds): the worker starts one drain and finishes it.
func TestWorkerDrainsOnceWhenSupervisorDies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	dir := t.TempDir()
	sup := exec.Command(os.Args[0], "-test.run=^TestHelperStopSupervisor$")
	sup.Env = append(os.Environ(), helperDirEnv+"="+dir)
	sup.Stdout, sup.Stderr = os.Stderr, os.Stderr
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sup.Process.Kill(); _ = sup.Wait() })
	logPath := filepath.Join(dir, "worker.log")
	read := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor := func(what string, cond func(string) bool) string {
		t.Helper()
		for {
			if s := read(); cond(s) {
				return s
			}
			if ctx.Err() != nil {
				t.Fatalf("timed out waiting for the worker to %s; its log:\n%s", what, read())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	s := waitFor("start", func(s string) bool { return strings.Contains(s, "\n") })
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(strings.SplitN(s, "\n", 2)[0], "ready ")))
	if err != nil {
		t.Fatalf("worker log %q", s)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })

	_ = sup.Process.Kill()
	_ = sup.Wait()
	waitFor("start draining", func(s string) bool { return strings.Contains(s, "drain ") })
	_ = syscall.Kill(pid, syscall.SIGTERM) // the same stop, again
	s = waitFor("finish", func(s string) bool { return strings.Contains(s, "drained") || strings.Contains(s, "cut short") })
	if strings.Count(s, "drain ") != 1 || !strings.Contains(s, "drained") {
		t.Fatalf("the worker did not drain exactly once to the end:\n%s", s)
	}
}

// TestLifelineEOF: a worker hears its supervisor is gone when the
// lifeline's write end closes, whatever signals it gets or misses.
func TestLifelineEOF(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	gone := watchLifeline(r)
	select {
	case <-gone:
		t.Fatal("gone before the supervisor closed its end")
	case <-time.After(50 * time.Millisecond):
	}
	w.Close()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("EOF on the lifeline was not noticed")
	}
}

// TestNewRunDir: 0700 even where run/ existed with a looser mode, and the
// directories of supervisors that are gone are removed.
func TestNewRunDir(t *testing.T) {
	data := t.TempDir()
	stale := filepath.Join(data, "run", "999999999") // no such pid
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(filepath.Join(data, "run"), 0o755)
	dir, err := NewRunDir(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v", d, fi.Mode(), err)
		}
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("a dead supervisor's run directory was kept: %v", err)
	}
	// Our own pid's directory from an earlier run starts empty.
	old := filepath.Join(dir, "logic.secret")
	if err := os.WriteFile(old, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRunDir(data); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("an earlier run's file was kept: %v", err)
	}
}
