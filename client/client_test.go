package client

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil/gatewaytest"
	"github.com/longlink/longlink/proto/pb"
)

var keys, _ = auth.NewKeySet(1, map[uint32][]byte{1: []byte("client-test-key-0123456789abcdef")})

func startGateway(t *testing.T, listen string, mod func(*gateway.Config)) *gateway.Server {
	t.Helper()
	cfg := gateway.Config{Listen: listen, Keys: keys, Loops: 1, WheelTick: 20 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	return gatewaytest.Start(t, cfg)
}

func tok(uid uint64, ttl time.Duration) string {
	t, _ := keys.Mint(uid, "", time.Now().Add(ttl))
	return t
}

func TestDialCallClose(t *testing.T) {
	s := startGateway(t, "127.0.0.1:0", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(5, time.Hour), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok := c.AuthOK(); ok.Uid != 5 || ok.Device != "phone" {
		t.Fatalf("auth ok: %v", ok)
	}
	got, err := c.Call(ctx, "echo", []byte("ping"))
	if err != nil || string(got) != "ping" {
		t.Fatalf("echo: %q %v", got, err)
	}
	_, err = c.Call(ctx, "missing", nil)
	var ce *CallError
	if !errors.As(err, &ce) || ce.Code != codec.CodeUnknownMethod || ce.Temporary() {
		t.Fatalf("unknown method: %v", err)
	}
	// Concurrent calls are matched by sequence number.
	errs := make(chan error, 30)
	for i := 0; i < 30; i++ {
		go func(i int) {
			b := []byte{byte(i)}
			got, err := c.Call(ctx, "echo", b)
			if err == nil && (len(got) != 1 || got[0] != byte(i)) {
				err = errors.New("mismatched answer")
			}
			errs <- err
		}(i)
	}
	for i := 0; i < 30; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if c.State() != Closed {
		t.Fatalf("state after Close: %v", c.State())
	}
	if _, err := c.Call(ctx, "echo", nil); err != ErrNotReady {
		t.Fatalf("call after close: %v", err)
	}
}

// An over-long device id is refused before dialing (the server's answer
// would be 4005 bad_auth, every time), and the server says 4005, not 4001
// (which would make a client throw its good token away).
func TestOverlongDevice(t *testing.T) {
	s := startGateway(t, "127.0.0.1:0", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	long := strings.Repeat("d", maxDevice+1)
	if _, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(1, time.Hour), Device: long}); err == nil || !strings.Contains(err.Error(), "Device") {
		t.Fatalf("want a clear error, got %v", err)
	}
	nc, err := net.DialTimeout("tcp", s.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	body, _ := proto.Marshal(&pb.Auth{Token: tok(1, time.Hour), Device: long})
	_, _ = nc.Write(codec.AppendFrame(nil, codec.CmdAuth, 0, 0, body))
	_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(nc)
	f, _, err := codec.Split(b, codec.MaxBodyLimit)
	var e pb.Error
	if err != nil || f.Cmd != codec.CmdError || proto.Unmarshal(f.Body, &e) != nil || codec.Code(e.Code) != codec.CodeBadAuth {
		t.Fatalf("server answered %v %x (%v), want ERROR 4005", f.Cmd, f.Body, err)
	}
}

func TestBadTokenDoesNotReconnect(t *testing.T) {
	s := startGateway(t, "127.0.0.1:0", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, Options{Addr: s.Addr(), Token: "forged"})
	var sc *ServerClose
	if !errors.As(err, &sc) || sc.Code != codec.CodeBadToken {
		t.Fatalf("want bad token close, got %v", err)
	}
	_, err = Dial(ctx, Options{Addr: s.Addr(), Token: tok(1, -time.Minute)})
	if !errors.As(err, &sc) || sc.Code != codec.CodeTokenExpired {
		t.Fatalf("want expired, got %v", err)
	}
}

func TestReconnectAfterGoAway(t *testing.T) {
	a := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) { c.DrainWindow = 50 * time.Millisecond })
	addr := a.Addr()
	var refreshed atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	states := make(chan State, 64)
	c, err := Dial(ctx, Options{Addr: addr, TokenFunc: func(context.Context) (string, error) {
		refreshed.Add(1)
		return tok(9, time.Hour), nil
	}, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond, OnState: func(s State, _ error) {
		select {
		case states <- s:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = a.Shutdown(ctx)
	for s := range states {
		if s == Disconnected {
			break
		}
	}
	// The same address comes back (a restarted gateway): the client finds it.
	startGateway(t, addr, nil)
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Call(ctx, "echo", []byte("back")); err != nil || string(got) != "back" {
		t.Fatalf("after reconnect: %q %v", got, err)
	}
	if refreshed.Load() < 2 {
		t.Fatalf("TokenFunc called %d times, want a fresh token per connection", refreshed.Load())
	}
}

// A server that authenticates and then never answers: the client must
// declare the link dead from missing PONGs, without waiting for TCP.
func TestDeadLinkDetected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 1024)
				_, _ = nc.Read(buf)
				body, _ := proto.Marshal(&pb.AuthOK{Uid: 1})
				_, _ = nc.Write(codec.AppendFrame(nil, codec.CmdAuthOK, 0, 0, body))
				_, _ = io.Copy(io.Discard, nc) // swallow heartbeats, never PONG
			}()
		}
	}()
	errc := make(chan error, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Addr: ln.Addr().String(), Token: "x", HeartbeatInterval: 50 * time.Millisecond,
		PongTimeout: 100 * time.Millisecond, NoReconnect: true,
		OnState: func(s State, err error) {
			if s == Disconnected {
				errc <- err
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrDeadLink) {
			t.Fatalf("want ErrDeadLink, got %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("dead link not detected")
	}
}

// TestDegradeLevelZeroRestoresBackoff: a degrade level raises the reconnect
// backoff; the level-0 CONFIG that ends it carries zero fields
// ("unchanged"), and the client goes back to the backoff it had before.
func TestDegradeLevelZeroRestoresBackoff(t *testing.T) {
	c := &Client{opts: Options{BackoffMin: 500 * time.Millisecond, BackoffMax: time.Minute}}
	backoff := func() [2]time.Duration { return [2]time.Duration{c.opts.BackoffMin, c.opts.BackoffMax} }
	c.applyConfig(&pb.ClientConfig{DegradeLevel: 1, BackoffMinMs: 2000, BackoffMaxMs: 120_000})
	c.applyConfig(&pb.ClientConfig{DegradeLevel: 2, BackoffMinMs: 5000, BackoffMaxMs: 300_000})
	if got := backoff(); got != [2]time.Duration{5 * time.Second, 5 * time.Minute} {
		t.Fatalf("at level 2: %v", got)
	}
	c.applyConfig(&pb.ClientConfig{DegradeLevel: 0})
	if got := backoff(); got != [2]time.Duration{500 * time.Millisecond, time.Minute} {
		t.Fatalf("after level 0: %v, want the backoff before the degrade", got)
	}
	if c.DegradeConfig().GetDegradeLevel() != 0 {
		t.Fatal("level not recorded")
	}
}
