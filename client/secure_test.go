package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/secure"
	"github.com/longlink/longlink/shake/shaketest/live"
)

func testRing(t *testing.T) (*secure.KeyRing, secure.ServerKey) {
	t.Helper()
	k, err := secure.GenerateKey(3, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := secure.NewKeyRing([]secure.ServerKey{k}, 3)
	if err != nil {
		t.Fatal(err)
	}
	return r, k
}

// An encrypted and a plaintext client side by side: AUTH, calls, pushes,
// heartbeats, GOAWAY.
func TestEncryptedAndPlaintextClients(t *testing.T) {
	hub, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0",
		PushTokens: []string{"test-push-token"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	ring, key := testRing(t)
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) {
		c.ServerKeys, c.Encryption = ring, gateway.EncryptionOptional
		c.NATS, c.Node, c.DrainWindow = hub.NATSURL(), "n1", 50*time.Millisecond
		c.NATSOptions = []nats.Option{hub.Auth(push.RoleGateway)}
	})
	cc, err := grpc.NewClient(hub.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(push.BearerToken("test-push-token")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	api := pb.NewPushServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	type cl struct {
		c      *Client
		pushes chan *pb.Push
		states chan error
	}
	dial := func(uid uint64, enc bool) cl {
		x := cl{pushes: make(chan *pb.Push, 8), states: make(chan error, 16)}
		o := Options{Addr: s.Addr(), Token: tok(uid, time.Hour), Device: "d", NoReconnect: true,
			HeartbeatInterval: 40 * time.Millisecond, PongTimeout: 300 * time.Millisecond,
			OnPush: func(p *pb.Push) { x.pushes <- p },
			OnState: func(st State, err error) {
				if st == Disconnected {
					x.states <- err
				}
			}}
		if enc {
			o.Encrypt, o.ServerKey = true, key.Pin()
		}
		if x.c, err = Dial(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { x.c.Close() })
		return x
	}
	enc, plain := dial(101, true), dial(102, false)
	for _, x := range []cl{enc, plain} {
		if got, err := x.c.Call(ctx, "echo", []byte("hi")); err != nil || string(got) != "hi" {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	for _, uid := range []uint64{101, 102} {
		if _, err := api.Notify(ctx, &pb.NotifyRequest{Uid: uid, Type: 1, Version: 7, Payload: []byte("p")}); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []cl{enc, plain} {
		select {
		case p := <-x.pushes:
			if p.Type != 1 || p.Version != 7 || string(p.Payload) != "p" {
				t.Fatalf("push %v", p)
			}
		case <-ctx.Done():
			t.Fatal("no push")
		}
	}
	// Heartbeats every 40 ms, a PONG due within 300 ms: half a second
	// without a dead-link disconnect means they were answered.
	time.Sleep(500 * time.Millisecond)
	for _, x := range []cl{enc, plain} {
		select {
		case err := <-x.states:
			t.Fatalf("disconnected during heartbeats: %v", err)
		default:
		}
	}
	go func() { _ = s.Shutdown(ctx) }()
	for _, x := range []cl{enc, plain} {
		select {
		case err := <-x.states:
			var sc *ServerClose
			if !errors.As(err, &sc) || sc.Code != codec.CodeShutdown {
				t.Fatalf("want GOAWAY, got %v", err)
			}
		case <-ctx.Done():
			t.Fatal("no GOAWAY")
		}
	}
}

func TestEncryptionPolicyAndPins(t *testing.T) {
	ring, key := testRing(t)
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) {
		c.ServerKeys, c.Encryption = ring, gateway.EncryptionRequired
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Plaintext against a server that requires encryption: 4010, no retry.
	_, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(1, time.Hour)})
	var sc *ServerClose
	if !errors.As(err, &sc) || sc.Code != codec.CodeEncRequired || sc.Code.Reconnect() {
		t.Fatalf("want encryption_required, got %v", err)
	}
	// An unknown key id first, then the real one: the client moves on.
	unknown := secure.ServerKey{ID: 77, Public: key.Public}
	c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(2, time.Hour), Encrypt: true,
		ServerKeys: []string{unknown.Pin(), key.Pin()}, BackoffMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Call(ctx, "echo", []byte("x")); err != nil || string(got) != "x" {
		t.Fatalf("echo: %q %v", got, err)
	}
	c.Close()
	// AES-256-GCM negotiated.
	c, err = Dial(ctx, Options{Addr: s.Addr(), Token: tok(3, time.Hour), Encrypt: true, ServerKey: key.Pin(), Suite: secure.SuiteAESGCM})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Call(ctx, "echo", []byte("aes")); err != nil || string(got) != "aes" {
		t.Fatalf("echo: %q %v", got, err)
	}
	c.Close()
	if _, err := Dial(ctx, Options{Addr: s.Addr(), Token: "t", Encrypt: true}); err == nil {
		t.Fatal("Encrypt without a pinned key accepted")
	}
}

// A server that does not hold the pinned key answers HELLO with a HELLO_OK
// of its own: the client refuses it and does not retry.
func TestForgedServerKeyRefused(t *testing.T) {
	_, key := testRing(t)
	forged, _ := secure.GenerateKey(key.ID, nil)
	fring, _ := secure.NewKeyRing([]secure.ServerKey{forged}, key.ID)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepts := make(chan struct{}, 8)
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			accepts <- struct{}{}
			go func() {
				defer nc.Close()
				_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
				r := &frameReader{r: nc, buf: make([]byte, 0, 512)}
				if _, err := r.next(); err != nil {
					return
				}
				// The MITM cannot read the client's message 1; it runs a
				// handshake of its own and answers with that message 2.
				_, hello, _ := secure.Hello(secure.SuiteChaChaPoly, key.ID, forged.Public[:], []byte("x"), nil)
				sh, _, err := fring.Accept(hello, nil)
				if err != nil {
					return
				}
				msg2, _, _ := sh.Finish(nil, codec.AppendFrame(nil, codec.CmdAuthOK, 0, 0, nil))
				_, _ = nc.Write(codec.AppendFrame(nil, codec.CmdHelloOK, codec.FlagEncrypted, 0, msg2))
				_, _ = io.Copy(io.Discard, nc)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = Dial(ctx, Options{Addr: ln.Addr().String(), Token: tok(1, time.Hour), Encrypt: true, ServerKey: key.Pin(), BackoffMin: 10 * time.Millisecond})
	if !errors.Is(err, ErrForgedServer) {
		t.Fatalf("want ErrForgedServer, got %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if len(accepts) != 1 {
		t.Fatalf("%d connections: the client retried a forged server", len(accepts))
	}
}

// Shake and open, a POLICY change and degrade CONFIG, all encrypted.
func TestEncryptedShakePolicyConfig(t *testing.T) {
	e := live.Serve(t, 50, "sdk-secure")
	ring, key := testRing(t)
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) {
		c.ServerKeys, c.Encryption = ring, gateway.EncryptionRequired
		c.Shake = &gateway.ShakeConfig{Issuer: e.Issuer, Opener: e.Opener, Verifier: e.Verifier}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(78, time.Hour), Device: "d", Encrypt: true, ServerKey: key.Pin()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	shakeAndOpen(t, ctx, c)
	orig := c.HeartbeatPolicy().GetMinIntervalS()
	if err := s.SetHeartbeatPolicies(s.HeartbeatPolicies().Scale(2)); err != nil {
		t.Fatal(err)
	}
	sw := s.Switches()
	sw.Degrade = 2
	if err := s.SetSwitches(sw, "test"); err != nil {
		t.Fatal(err)
	}
	for c.DegradeConfig().GetDegradeLevel() != 2 || c.HeartbeatPolicy().GetMinIntervalS() <= orig {
		if ctx.Err() != nil {
			t.Fatalf("no sealed CONFIG/POLICY: %v, min %d (was %d)", c.DegradeConfig(), c.HeartbeatPolicy().GetMinIntervalS(), orig)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReconnectUsesPreparedHandshake: after a connection is up the client
// prepares its next handshake (ephemeral and es) off the connect path; the
// reconnect takes it (once) and works, and a fresh one is prepared for the
// connection after.
func TestReconnectUsesPreparedHandshake(t *testing.T) {
	ring, key := testRing(t)
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) {
		c.ServerKeys, c.Encryption = ring, gateway.EncryptionRequired
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(5, time.Hour), Encrypt: true, ServerKey: key.Pin(),
		BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("a prepared handshake", func() bool { return c.prep.Load() != nil })
	first := c.prep.Load()
	if c.prepUsed.Load() != 0 {
		t.Fatalf("prepared handshakes used before any reconnect: %d", c.prepUsed.Load())
	}
	c.mu.Lock()
	_ = c.cur.nc.Close() // the link drops
	c.mu.Unlock()
	waitFor("the reconnect", func() bool { return c.prepUsed.Load() == 1 })
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Call(ctx, "echo", []byte("again")); err != nil || string(got) != "again" {
		t.Fatalf("after the reconnect: %q %v", got, err)
	}
	waitFor("the next prepared handshake", func() bool { p := c.prep.Load(); return p != nil && p != first })
	if _, err := first.hs.Hello(nil); !errors.Is(err, secure.ErrUsed) {
		t.Fatalf("the used handshake wrote another HELLO: %v", err)
	}
}
