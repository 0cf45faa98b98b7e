package web

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/internal/testutil/gatewaytest"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

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

// testPage serves a page of testdata and longlink.js; the page reports
// its stages by POSTing JSON to /result, which arrive on stages. It
// returns the page's URL.
func testPage(t *testing.T, name string) (url string, stages <-chan stage) {
	ch := make(chan stage, 16)
	mux := http.NewServeMux()
	mux.Handle("/longlink.js", http.FileServerFS(Files))
	mux.HandleFunc("/"+name, func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, "testdata/"+name) })
	mux.HandleFunc("/result", func(w http.ResponseWriter, r *http.Request) {
		var s stage
		_ = json.NewDecoder(r.Body).Decode(&s)
		ch <- s
	})
	page := httptest.NewServer(mux)
	t.Cleanup(page.Close)
	return page.URL + "/" + name, ch
}

// awaitStages hands each stage the page reports to handle until "done"; a
// "failed" stage, or 60 s without "done", fails the test (what names it).
func awaitStages(t *testing.T, stages <-chan stage, what string, handle func(stage)) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case s := <-stages:
			switch s.Stage {
			case "failed":
				t.Fatalf("browser: %s", s.Error)
			case "done":
				return
			}
			handle(s)
		case <-timeout:
			t.Fatal(what + " timed out")
		}
	}
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
	browser := testutil.FindChromium(t)
	keys, _ := auth.NewKeySet(1, map[uint32][]byte{1: []byte("browser-test-key-0123456789abcd")})
	hub, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", PushTokens: []string{"test-push-token"}, Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close) // after the gateway's close
	gcfg := gateway.Config{Keys: keys, Loops: 1, NATS: hub.NATSURL(), NATSOptions: []nats.Option{hub.Auth(push.RoleGateway)}}
	if mod != nil {
		mod(&gcfg)
	}
	gw := gatewaytest.Start(t, gcfg)
	tok, _ := keys.Mint(4242, "", time.Now().Add(time.Hour))

	page, stages := testPage(t, "selftest.html")
	q := url.Values{"ws": {"ws://" + gw.Addr() + "/ws"}, "token": {tok}, "push": {"1"}}
	for k, v := range extra {
		q[k] = v
	}
	defer testutil.StartChromium(t, browser, page+"?"+q.Encode())()

	awaitStages(t, stages, "browser test", func(s stage) {
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
		}
	})
}
