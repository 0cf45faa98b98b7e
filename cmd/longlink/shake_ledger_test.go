package main

import (
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/longlink/longlink/shake/opening"
)

// The ledger's HTTP lists every winner: it needs the admin token, and a
// refusal says nothing more than 401.
func TestLedgerHTTPNeedsAdminToken(t *testing.T) {
	l, err := opening.OpenLedger(filepath.Join(t.TempDir(), "l.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv := httptest.NewServer(ledgerMux(l, "s3cret"))
	defer srv.Close()
	get := func(path, auth string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rsp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer rsp.Body.Close()
		b, _ := io.ReadAll(rsp.Body)
		return rsp.StatusCode, string(b)
	}
	for _, path := range []string{"/ledger/export", "/ledger/stats", "/nope"} {
		for _, auth := range []string{"", "Bearer wrong", "s3cret", "Basic s3cret"} {
			if code, body := get(path, auth); code != 401 || body != "" {
				t.Fatalf("%s with %q: %d %q, want a bare 401", path, auth, code, body)
			}
		}
	}
	if code, body := get("/ledger/export", "Bearer s3cret"); code != 200 || body != "packet_id,amount_fen,uid,opened_at,sealed\n" {
		t.Fatalf("with the token: %d %q", code, body)
	}
	// An empty token (none configured) opens nothing.
	srv2 := httptest.NewServer(ledgerMux(l, ""))
	defer srv2.Close()
	rsp, err := http.Get(srv2.URL + "/ledger/stats")
	if err != nil {
		t.Fatal(err)
	}
	rsp.Body.Close()
	if rsp.StatusCode != 401 {
		t.Fatalf("no token configured: %d", rsp.StatusCode)
	}
}

// With an external NATS (--nats) the gateway runs no ledger unless told to.
func TestLedgerOffByDefaultWithExternalNATS(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	sf := addShakeFlags(fs)
	if err := fs.Parse([]string{"--shake-dir", t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Nothing is listening at this URL and no keys are given: only an
	// off ledger starts without an error.
	stop, err := startShakeLedger(quiet, sf, t.TempDir(), "nats://127.0.0.1:1", true, "tok")
	if err != nil {
		t.Fatalf("external NATS, default --shake-ledger: %v", err)
	}
	stop()
	if _, err := startShakeLedger(quiet, sf, t.TempDir(), "nats://127.0.0.1:1", false, "tok"); err == nil {
		t.Fatal("embedded NATS: the ledger should have tried to start (and failed here: no keys)")
	}
}
