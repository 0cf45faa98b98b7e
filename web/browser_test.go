package web

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// findChromium returns the browser to drive, or "" if none is installed.
func findChromium() string {
	for _, c := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	return ""
}

type stage struct {
	Stage   string `json:"stage"`
	UID     uint64 `json:"uid"`
	Body    string `json:"body"`
	Code    int    `json:"code"`
	Type    uint32 `json:"type"`
	Version uint64 `json:"version"`
	Payload string `json:"payload"`
	Error   string `json:"error"`
}

// notify pushes "type 3 reached version 17" to uid through the real push
// path (gRPC PushService → router → NATS → gateway worker), retrying until
// the router has heard the user is online.
func notify(t *testing.T, hub *push.Hub, uid uint64) {
	cc, err := grpc.NewClient(hub.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(push.BearerToken("test-push-token")))
	if err != nil {
		t.Error(err)
		return
	}
	defer cc.Close()
	api := pb.NewPushServiceClient(cc)
	for i := 0; i < 100; i++ {
		r, err := api.Notify(context.Background(), &pb.NotifyRequest{Uid: uid, Type: 3, Version: 17, Payload: []byte("new message")})
		if err == nil && r.Routed > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Error("push never routed to the browser's connection")
}

// TestBrowserClient runs web/longlink.js in a real headless Chromium against
// a real gateway: connect, AUTH, call echo, get a logical error, receive a
// push sent through the push API.
func TestBrowserClient(t *testing.T) { runBrowserClient(t, nil, nil) }

// runBrowserClient is TestBrowserClient with gateway options (mod) and
// extra page parameters (q), for the encrypted variant (browser_secure_test.go).
func runBrowserClient(t *testing.T, mod func(*gateway.Config), extra url.Values) {
	browser := findChromium()
	if browser == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must install chromium (see .ci/run)")
		}
		t.Skip("chromium not installed")
	}
	keys, _ := auth.NewKeySet(1, map[uint32][]byte{1: []byte("browser-test-key-0123456789abcd")})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", PushTokens: []string{"test-push-token"}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()
	gcfg := gateway.Config{Listen: "127.0.0.1:0", Keys: keys, Loops: 1, Logger: quiet, NATS: hub.NATSURL(),
		NATSOptions: []nats.Option{hub.Auth(push.RoleGateway)}}
	if mod != nil {
		mod(&gcfg)
	}
	gw, err := gateway.New(gcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	tok, _ := keys.Mint(4242, "", time.Now().Add(time.Hour))

	stages := make(chan stage, 16)
	mux := http.NewServeMux()
	mux.Handle("/longlink.js", http.FileServerFS(Files))
	mux.HandleFunc("/selftest.html", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, "testdata/selftest.html") })
	mux.HandleFunc("/result", func(w http.ResponseWriter, r *http.Request) {
		var s stage
		_ = json.NewDecoder(r.Body).Decode(&s)
		stages <- s
	})
	page := httptest.NewServer(mux)
	defer page.Close()

	q := url.Values{"ws": {"ws://" + gw.Addr() + "/ws"}, "token": {tok}, "push": {"1"}}
	for k, v := range extra {
		q[k] = v
	}
	cmd := exec.Command(browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), page.URL+"/selftest.html?"+q.Encode())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() }()

	timeout := time.After(60 * time.Second)
	for {
		select {
		case s := <-stages:
			switch s.Stage {
			case "authed":
				if s.UID != 4242 {
					t.Fatalf("authed as %d", s.UID)
				}
				go notify(t, hub, 4242)
			case "echo":
				if s.Body != "hello from chromium" {
					t.Fatalf("echo answered %q", s.Body)
				}
			case "error":
				if s.Code != 1001 {
					t.Fatalf("unknown method gave code %d", s.Code)
				}
			case "push":
				if s.Type != 3 || s.Version != 17 || s.Payload != "new message" {
					t.Fatalf("push received: %+v", s)
				}
			case "failed":
				t.Fatalf("browser: %s", s.Error)
			case "done":
				return
			}
		case <-timeout:
			t.Fatal("browser test timed out")
		}
	}
}
