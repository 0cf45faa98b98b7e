package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/client"
	"github.com/longlink/longlink/internal/testutil"
)

// A SIGHUP to a supervisor with workers (what systemctl reload sends) keeps
// it running and reaches every worker: tokens of a new key are admitted and
// the connections already open stay up.
func TestSIGHUPReloadsTokenKeysWithoutDroppingConnections(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "keys.json")
	writeKeys := func(active uint32, ids ...uint32) *auth.KeySet {
		keys := map[uint32][]byte{}
		body := fmt.Sprintf(`{"active": %d, "keys": [`, active)
		for i, id := range ids {
			secret := []byte(fmt.Sprintf("reload-key-%02d-0123456789abcdefgh", id))
			keys[id] = secret
			if i > 0 {
				body += ","
			}
			body += fmt.Sprintf(`{"id": %d, "secret": "%x"}`, id, secret)
		}
		if err := os.WriteFile(keyFile+".tmp", []byte(body+"]}"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(keyFile+".tmp", keyFile); err != nil {
			t.Fatal(err)
		}
		ks, err := auth.NewKeySet(active, keys)
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	oldKeys := writeKeys(1, 1)
	listen, admin := testutil.FreeAddr(t), testutil.FreeAddr(t)
	// The real binary: the supervisor re-executes itself for its workers.
	cmd := testutil.StartLonglink(t, dir, "gateway", "--workers", "2", "--data", dir, "--listen", listen, "--admin", admin, "--http=",
		"--push=false", "--backend", "echo", "--encryption", "optional", "--drain", "100ms", "--log-level", "warn")
	testutil.WaitReady(t, "http://"+admin+"/readyz", 30*time.Second)
	hc := &http.Client{Timeout: time.Second}
	dial := func(ks *auth.KeySet, uid uint64) (*client.Client, error) {
		tok, _ := ks.Mint(uid, "", time.Now().Add(time.Hour))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return client.Dial(ctx, client.Options{Addr: listen, Token: tok, Device: "d", NoReconnect: true})
	}
	call := func(c *client.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Call(ctx, "echo", []byte("x"))
		return err
	}
	// admittedEverywhere waits (10 s at most) until every worker has
	// reloaded: 8 fresh connections in a row with tokens of ks (users from
	// uid on) are admitted.
	admittedEverywhere := func(ks *auth.KeySet, uid uint64, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for n := uint64(0); n < 8; {
			c, err := dial(ks, uid+n)
			if err != nil {
				if time.Now().After(deadline) {
					t.Fatalf("%s: %v", what, err)
				}
				n = 0
				time.Sleep(100 * time.Millisecond)
				continue
			}
			c.Close()
			n++
		}
	}
	var open []*client.Client
	for uid := uint64(1); uid <= 4; uid++ { // over both workers
		c, err := dial(oldKeys, uid)
		if err != nil {
			t.Fatalf("dial with the first key: %v", err)
		}
		defer c.Close()
		open = append(open, c)
	}
	newKeys := writeKeys(2, 1, 2)
	if c, err := dial(newKeys, 50); err == nil {
		c.Close()
		t.Fatal("a token of key 2 was admitted before the reload")
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	admittedEverywhere(newKeys, 100, "a token of the new key is still refused after SIGHUP")
	select {
	case <-cmd.Exited():
		t.Fatalf("the supervisor exited on SIGHUP: %v", cmd.Err())
	default:
	}
	for i, c := range open {
		if err := call(c); err != nil {
			t.Errorf("connection %d opened before the reload: %v", i, err)
		}
	}

	// The same by an admin call: POST /reload on the supervisor's admin
	// port (admin token) reaches every worker.
	keys3 := writeKeys(3, 1, 2, 3)
	adminTok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	post := func(tok string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/reload", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		r, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if code := post(""); code != http.StatusUnauthorized {
		t.Fatalf("POST /reload without the admin token: %d", code)
	}
	if code := post(strings.TrimSpace(string(adminTok))); code != http.StatusOK {
		t.Fatalf("POST /reload: %d", code)
	}
	admittedEverywhere(keys3, 200, "a token of key 3 is still refused after POST /reload")
}
