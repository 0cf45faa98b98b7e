package testutil

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FindChromium returns the headless browser to drive. Without one the test
// is skipped, except under CI, which must install it (.ci/run).
func FindChromium(t testing.TB) string {
	t.Helper()
	for _, c := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI must install chromium (see .ci/run)")
	}
	t.Skip("chromium not installed")
	return ""
}

// chromiumFlags start a headless Chromium with a fresh profile in dir and
// nothing running in the background.
func chromiumFlags(dir string) []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--user-data-dir=" + dir}
}

// chromiumCmd is browser with the common flags, then args, in its own
// process group so that stopGroup ends its helpers too.
func chromiumCmd(t testing.TB, ctx context.Context, browser string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, browser, append(chromiumFlags(t.TempDir()), args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// stopGroup kills the process group of a started cmd, reaps its leader,
// and waits (up to 5 s) until no live process of the group is left:
// Chromium's helper processes (renderer, crashpad) otherwise go on writing
// into the profile directory while t.TempDir's cleanup removes it. (Dead
// helpers may linger as zombies until init reaps them; they write nothing.)
func stopGroup(cmd *exec.Cmd) {
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	if cmd.ProcessState == nil {
		_ = cmd.Wait()
	}
	for deadline := time.Now().Add(5 * time.Second); groupAlive(pgid) && time.Now().Before(deadline); {
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // one forked since
		time.Sleep(20 * time.Millisecond)
	}
}

// groupAlive reports whether a process of group pgid is alive (not a
// zombie), from /proc/<pid>/stat: "pid (comm) state ppid pgrp ...".
func groupAlive(pgid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[0] != "Z" && f[0] != "X" && f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

// RunChromium runs headless Chromium on url with extra flags (e.g.
// --dump-dom, --screenshot=FILE) until it exits, at most 90 s, and returns
// its stdout; a failure fails the test with its stderr.
func RunChromium(t testing.TB, browser, url string, flags ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := chromiumCmd(t, ctx, browser, append(append([]string{"--window-size=1400,1800"}, flags...), url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	stopGroup(cmd)
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", flags, err, stderr.String())
	}
	return out
}

// StartChromium opens url in headless Chromium and returns the function
// that stops it (the whole process group, reaped); the test must call it.
func StartChromium(t testing.TB, browser, url string) (stop func()) {
	t.Helper()
	cmd := chromiumCmd(t, context.Background(), browser, url)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() { stopGroup(cmd) }
}
