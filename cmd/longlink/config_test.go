package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil/gatewaytest"
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

// SIGHUP re-reads the configuration: runtime settings apply as switches,
// others are reported as needing a restart.
func TestReloadGatewayConfig(t *testing.T) {
	keys, _ := auth.NewKeySet(1, map[uint32][]byte{1: []byte("reload-test-key-0123456789abcdef")})
	srv := gatewaytest.Start(t, gateway.Config{Keys: keys, Loops: 1})
	file := filepath.Join(t.TempDir(), "longlink.yaml")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("gateway:\n  accept-rate: 0\n  listen: \":7100\"\n")
	args := []string{"--config", file}
	running, err := flagSetOf(section{"gateway", func() int { return commands["gateway"].run(nil) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := running.Parse(args); err != nil {
		t.Fatal(err)
	}
	parsed := snapshotFlags(running)
	write("gateway:\n  accept-rate: 250\n  max-conns: 9000\n  listen: \":9100\"\n")
	var logs bytes.Buffer
	reloadGatewayConfig(slog.New(slog.NewTextHandler(&logs, nil)), srv, parsed, args)
	if sw := srv.Switches(); sw.AcceptRate != 250 || sw.MaxConns != 9000 {
		t.Errorf("switches after reload: accept %v max %v", sw.AcceptRate, sw.MaxConns)
	}
	if !strings.Contains(logs.String(), "applied at the next restart") || !strings.Contains(logs.String(), "setting=listen") {
		t.Errorf("a restart-only setting was not reported:\n%s", logs.String())
	}
	write("gateway:\n  accept-rate: many\n")
	logs.Reset()
	reloadGatewayConfig(slog.New(slog.NewTextHandler(&logs, nil)), srv, parsed, args)
	if !strings.Contains(logs.String(), "configuration not reloaded") || srv.Switches().AcceptRate != 250 {
		t.Errorf("a bad file must change nothing:\n%s", logs.String())
	}
}
