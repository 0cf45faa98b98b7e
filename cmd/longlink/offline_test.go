package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/offline"
	"github.com/longlink/longlink/offline/standin"
)

// start runs the binary's main with args in the background; it is killed
// (by its pid) at the end of the test.
func start(t *testing.T, env []string, args string) *bytes.Buffer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "LONGLINK_TEST_ARGS="+args, "HOME="+t.TempDir()), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return &out
}

// TestOfflineSeparateSender runs the real binary as `longlink gateway
// --offline queue` and a separate `longlink offline` sender with APNs
// pointed at a stand-in (trusted through SSL_CERT_FILE): a device
// registered over HTTP, then gone, gets one APNs request for a notify sent
// with `longlink push`; the sender asks the gateway's router which devices
// are connected over NATS (longlink.push.devices).
func TestOfflineSeparateSender(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	p8, ca := filepath.Join(dir, "key.p8"), filepath.Join(dir, "ca.pem")
	srv := standin.APNs(&k.PublicKey, "KEYID00001", "TEAM000001", "com.example.app")
	defer srv.Close()
	_ = os.WriteFile(p8, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	_ = os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)

	data := filepath.Join(dir, "data")
	httpAddr, grpcAddr, natsAddr := testutil.FreeAddr(t), testutil.FreeAddr(t), testutil.FreeAddr(t)
	gw := start(t, nil, fmt.Sprintf("gateway --listen %s --admin= --http %s --push-grpc %s --nats-listen %s --data %s --offline queue --log-level warn",
		testutil.FreeAddr(t), httpAddr, grpcAddr, natsAddr, data))
	var keys *auth.KeySet
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ks, err := auth.LoadKeyFile(auth.KeyFile(data)); err == nil {
			if _, err := os.Stat(filepath.Join(data, "nats.secret")); err == nil {
				keys = ks
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not start:\n%s", gw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	snd := start(t, []string{"SSL_CERT_FILE=" + ca}, fmt.Sprintf("offline --nats nats://%s --data %s --apns-key %s --apns-key-id KEYID00001 --apns-team-id TEAM000001 --apns-topic com.example.app --apns-endpoint %s --offline-delay 300ms --log-level warn",
		natsAddr, data, p8, srv.URL))

	tok, err := keys.Mint(42, "pad", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.Repeat("ef", 32)
	for {
		req, _ := http.NewRequest("POST", "http://"+httpAddr+"/v1/call/device.register", strings.NewReader(`{"platform":"apns","token":"`+token+`"}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("device.register: %v %v\n%s", resp, err, gw)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sent := func() bool { return srv.Count(token) >= 1 }
	for v := 1; !sent(); v++ { // the enqueuer's mirror sees the registration a moment later: notify until it does
		if out, code := longlink(t, fmt.Sprintf("push --addr %s --data %s --uid 42 --type 1 --version %d notify", grpcAddr, data, v)); code != 0 {
			t.Fatalf("longlink push: %d %s", code, out)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no APNs request\ngateway:\n%s\nsender:\n%s", gw, snd)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// TestSwitchLine: switches nobody has set say so instead of a zero time.
func TestSwitchLine(t *testing.T) {
	if got := switchLine(offline.Switches{}); !strings.Contains(got, "never set") || strings.Contains(got, "0001") {
		t.Fatalf("unset switches: %q", got)
	}
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	got := switchLine(offline.Switches{Off: true, By: "ops@h", At: at, Reason: "incident 7"})
	for _, want := range []string{"off=true", `"ops@h"`, "2026-12-01T10:00:00Z", "incident 7"} {
		if !strings.Contains(got, want) {
			t.Fatalf("set switches: %q lacks %q", got, want)
		}
	}
}
