package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/client"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

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
	listen, admin := freeAddr(t), freeAddr(t)
	// The real binary: the supervisor re-executes itself for its workers.
	bin := filepath.Join(t.TempDir(), "longlink")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "gateway", "--workers", "2", "--data", dir, "--listen", listen, "--admin", admin, "--http=",
		"--push=false", "--backend", "echo", "--encryption", "optional", "--drain", "100ms", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r, err := hc.Get("http://" + admin + "/readyz"); err == nil && r.StatusCode == 200 {
			r.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("gateway never became ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
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
	deadline = time.Now().Add(10 * time.Second)
	for n := 0; n < 8; { // every worker must have reloaded: several fresh connections in a row
		c, err := dial(newKeys, uint64(100+n))
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("a token of the new key is still refused after SIGHUP: %v", err)
			}
			n = 0
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c.Close()
		n++
	}
	select {
	case err := <-exited:
		t.Fatalf("the supervisor exited on SIGHUP: %v", err)
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
	deadline = time.Now().Add(10 * time.Second)
	for n := 0; n < 8; {
		c, err := dial(keys3, uint64(200+n))
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("a token of key 3 is still refused after POST /reload: %v", err)
			}
			n = 0
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c.Close()
		n++
	}
}
