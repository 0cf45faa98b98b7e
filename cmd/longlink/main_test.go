package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMain lets a test run the binary's main as a child process.
func TestMain(m *testing.M) {
	if args := os.Getenv("LONGLINK_TEST_ARGS"); args != "" {
		os.Args = append([]string{"longlink"}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// longlink runs the binary's main with args; it returns stdout and the exit code.
func longlink(t *testing.T, args string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LONGLINK_TEST_ARGS="+args, "HOME="+t.TempDir())
	var out bytes.Buffer
	cmd.Stdout = &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("longlink %s did not exit", args)
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// Help goes to stdout with exit 0, for every subcommand, and usage text with
// backquotes is printed as written (flag.PrintDefaults would have turned
// "-backend `longlink logic`" into a placeholder).
func TestHelpExitsZeroAndPrintsUsageVerbatim(t *testing.T) {
	for _, c := range []string{"gateway", "token", "logic", "loadtest", "shake gen"} {
		out, code := longlink(t, c+" -h")
		if code != 0 || !strings.Contains(out, "Usage: longlink") {
			t.Errorf("%s -h: exit %d, stdout %q", c, code, out)
		}
	}
	out, _ := longlink(t, "gateway -h")
	for _, bad := range []string{"-backend longlink logic", "-shake-opener longlink"} {
		if strings.Contains(out, bad) {
			t.Errorf("gateway -h shows the backquote placeholder %q", bad)
		}
	}
	if !strings.Contains(out, "\n shake:\n") || !strings.Contains(out, "\n nats:\n") {
		t.Errorf("gateway -h does not group flags by area:\n%s", out)
	}
	if strings.Contains(out, "number of CPUs") {
		t.Error("-loops still documents a default it does not have")
	}
}

func TestPrintFlagsGroupsByArea(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("backend", "embedded", "remote `longlink logic` instances")
	fs.Int("shake-limit", 5, "limit")
	fs.Bool("shake", false, "on")
	fs.Duration("drain", 10*time.Second, "drain")
	var b bytes.Buffer
	printFlags(&b, fs)
	want := "  -backend string\n    \tremote `longlink logic` instances (default \"embedded\")\n" +
		"  -drain duration\n    \tdrain (default 10s)\n" +
		"\n shake:\n  -shake\n    \ton\n  -shake-limit int\n    \tlimit (default 5)\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestCompletionScript(t *testing.T) {
	out, code := longlink(t, "completion bash")
	if code != 0 || !strings.Contains(out, "complete -F _longlink longlink") || !strings.Contains(out, "gateway") {
		t.Fatalf("exit %d: %s", code, out)
	}
}
