package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// config print | config check - round-trips, for every section.
func TestConfigPrintCheckRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := printConfig(&b, ""); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"gateway:", "logic:", "loadtest:", "shake opener:", "token:"} {
		if !strings.Contains(b.String(), "\n"+s) && !strings.HasPrefix(b.String(), s) {
			t.Errorf("print lacks section %q", s)
		}
	}
	if errs := checkConfig(b.Bytes()); len(errs) > 0 {
		t.Fatalf("printed configuration does not check: %v", errs)
	}
}

func TestConfigCheckNamesLines(t *testing.T) {
	raw := []byte("gateway:\n  listen: \":7100\"\n  workerz: 2\n  heartbeat: soon\nlogik:\n  listen: x\n")
	errs := checkConfig(raw)
	want := []string{`3: gateway: unknown key "workerz"`, `4: gateway.heartbeat: "soon"`, `5: unknown section "logik"`}
	got := errors.Join(errs...).Error()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("errors %q lack %q", got, w)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("%d errors, want %d: %v", len(errs), len(want), errs)
	}
}

// Precedence: default < file < LONGLINK_* < command line.
func TestConfigFilePrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "longlink.yaml")
	if err := os.WriteFile(file, []byte("gateway:\n  listen: \":9100\"\n  workers: 3\n  drain: 2s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LONGLINK_CONFIG", file)
	t.Setenv("LONGLINK_WORKERS", "4")
	var b bytes.Buffer
	if err := printConfig(&b, "gateway"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`listen: :9100`, `workers: 4`, `drain: 2s`} {
		if !strings.Contains(b.String(), "\n  "+w+" ") {
			t.Errorf("effective configuration lacks %q:\n%s", w, b.String())
		}
	}
	// And a command reading it: the command line wins over both.
	fs := newFlagSet("gateway", "")
	workers := fs.Int("workers", 1, "")
	listen := fs.String("listen", ":7100", "")
	fs.Duration("drain", 0, "")
	if !parseFlags(fs, []string{"--config", file, "--workers", "5"}) {
		t.Fatal("parseFlags failed")
	}
	if *workers != 5 || *listen != ":9100" {
		t.Errorf("workers %d listen %q, want 5 and :9100", *workers, *listen)
	}
	// A bad value in the file fails the command with the line.
	if err := os.WriteFile(file, []byte("gateway:\n  workers: many\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs = newFlagSet("gateway", "")
	fs.Int("workers", 1, "")
	if err := applyConfigFile(fs, nil); err == nil || !strings.Contains(err.Error(), ":2: gateway.workers") {
		t.Errorf("bad file value: %v", err)
	}
}

// The example configuration shipped in deploy/ stays valid.
func TestExampleConfigChecks(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/longlink.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if errs := checkConfig(raw); len(errs) > 0 {
		t.Fatalf("deploy/longlink.yaml: %v", errs)
	}
}
