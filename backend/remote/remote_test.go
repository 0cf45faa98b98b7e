package remote

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
)

const testSecret = "0123456789abcdef-test-secret"

// testInstance is one logic instance on loopback whose handlers say who
// answered.
type testInstance struct {
	name     string
	addr     string
	gs       *grpc.Server
	be       *backend.Embedded
	srv      *Server
	failing  atomic.Bool // answer every call with a system failure
	calls    atomic.Int64
	deadline atomic.Int64 // ms left on the last call's deadline
	online   atomic.Int64
}

func startInstance(t *testing.T, name string, maxInflight int) *testInstance {
	t.Helper()
	return startInstanceOn(t, name, "127.0.0.1:0", maxInflight)
}

func startInstanceOn(t *testing.T, name, addr string, maxInflight int) *testInstance {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := ServerOptions(ServerAuth{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	ti := &testInstance{name: name, addr: ln.Addr().String(), gs: grpc.NewServer(opts...), be: backend.NewEmbedded()}
	ti.srv = NewServer(ti.be, maxInflight)
	ti.be.Handle("who", func(ctx context.Context, r *backend.Request) ([]byte, error) {
		ti.calls.Add(1)
		if d, ok := ctx.Deadline(); ok {
			ti.deadline.Store(time.Until(d).Milliseconds())
		}
		if ti.failing.Load() {
			return nil, errors.New("disk on fire")
		}
		return []byte(ti.name), nil
	})
	ti.be.Handle("storeless", func(context.Context, *backend.Request) ([]byte, error) {
		ti.calls.Add(1)
		return nil, &backend.Error{Kind: backend.KindUnavailable, Code: codec.CodeUnavailable, Msg: "store down", RetryAfter: 1000}
	})
	ti.be.Handle("nope", func(context.Context, *backend.Request) ([]byte, error) {
		return nil, backend.Logical(1234, "no such thing")
	})
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	ti.be.Handle("slow", func(ctx context.Context, r *backend.Request) ([]byte, error) {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return nil, ctx.Err()
	})
	ti.be.OnPresence(func(backend.Presence) { ti.online.Add(1) }, nil)
	ti.srv.Register(ti.gs)
	go func() { _ = ti.gs.Serve(ln) }()
	t.Cleanup(ti.gs.Stop)
	return ti
}

func newClient(t *testing.T, cfg Config, insts ...*testInstance) *Client {
	t.Helper()
	for _, in := range insts {
		cfg.Addrs = append(cfg.Addrs, in.addr)
	}
	if cfg.Auth.Secret == "" {
		cfg.Auth.Secret = testSecret
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func who(c *Client, uid uint64) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	b, err := c.Call(ctx, &backend.Request{UID: uid, Method: "who"})
	return string(b), err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStickyHashingAndSpread(t *testing.T) {
	a, b, c := startInstance(t, "a", 0), startInstance(t, "b", 0), startInstance(t, "c", 0)
	cl := newClient(t, Config{}, a, b, c)
	owner := map[uint64]string{}
	count := map[string]int{}
	for uid := uint64(1); uid <= 600; uid++ {
		w, err := who(cl, uid)
		if err != nil {
			t.Fatal(err)
		}
		owner[uid] = w
		count[w]++
	}
	for _, n := range []string{"a", "b", "c"} {
		if count[n] < 120 { // 200 each on average
			t.Fatalf("uneven spread %v", count)
		}
	}
	for uid := uint64(1); uid <= 600; uid += 7 {
		if w, _ := who(cl, uid); w != owner[uid] {
			t.Fatalf("uid %d moved from %s to %s while healthy", uid, owner[uid], w)
		}
	}
	// Presence goes to the user's instance too.
	var target *testInstance
	for _, in := range []*testInstance{a, b, c} {
		if in.name == owner[5] {
			target = in
		}
	}
	if err := cl.Online(context.Background(), backend.Presence{UID: 5, Device: "d"}); err != nil || target.online.Load() != 1 {
		t.Fatalf("presence: %v, owner got %d", err, target.online.Load())
	}
}

func TestLogicalErrorsPassThroughWithoutRetry(t *testing.T) {
	a, b := startInstance(t, "a", 0), startInstance(t, "b", 0)
	cl := newClient(t, Config{}, a, b)
	_, err := cl.Call(context.Background(), &backend.Request{UID: 1, Method: "nope"})
	var be *backend.Error
	if !errors.As(err, &be) || be.Kind != backend.KindLogical || be.Code != 1234 || be.Msg != "no such thing" {
		t.Fatalf("got %v", err)
	}
	_, err = cl.Call(context.Background(), &backend.Request{UID: 1, Method: "missing"})
	if !errors.As(err, &be) || be.Code != codec.CodeUnknownMethod {
		t.Fatalf("unknown method: %v", err)
	}
	if n := value(cl.m.retries); n != 0 {
		t.Fatalf("%v retries of logical errors", n)
	}
}

func TestSystemFailureRetriesElsewhereAndEjects(t *testing.T) {
	a, b := startInstance(t, "a", 0), startInstance(t, "b", 0)
	cl := newClient(t, Config{FailThreshold: 2, EjectBase: 200 * time.Millisecond}, a, b)
	var uid uint64
	for uid = 1; cl.Owner(uid) != a.addr; uid++ {
	}
	a.failing.Store(true)
	for i := 0; i < 3; i++ {
		w, err := who(cl, uid)
		if err != nil || w != "b" {
			t.Fatalf("call %d: %q %v (want a retry on b)", i, w, err)
		}
	}
	if cl.Owner(uid) != b.addr {
		t.Fatal("failing instance not ejected")
	}
	if n := value(cl.m.system.WithLabelValues("who", a.addr, "internal")); n != 2 {
		t.Fatalf("system failures on a: %v", n)
	}
	// Probed back in once healthy: the user returns home.
	a.failing.Store(false)
	waitFor(t, "readmission", func() bool { return cl.Owner(uid) == a.addr })
	if w, _ := who(cl, uid); w != "a" {
		t.Fatalf("after readmission answered by %s", w)
	}
}

// An instance answering "unavailable" (its store is down: every instance
// shares it) is alive: the pool returns the answer with its retry hint, does
// not retry it elsewhere and does not eject the instance, so its users stay
// home and calls resume there as soon as the store does.
func TestUnavailableAnswerNeitherRetriedNorEjected(t *testing.T) {
	a, b := startInstance(t, "a", 0), startInstance(t, "b", 0)
	cl := newClient(t, Config{FailThreshold: 2}, a, b)
	var uid uint64
	for uid = 1; cl.Owner(uid) != a.addr; uid++ {
	}
	for i := 0; i < 5; i++ {
		_, err := cl.Call(context.Background(), &backend.Request{UID: uid, Method: "storeless"})
		var be *backend.Error
		if !errors.As(err, &be) || be.Kind != backend.KindUnavailable || be.Code != codec.CodeUnavailable || be.RetryAfter != 1000 || be.Msg != "store down" {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if cl.Owner(uid) != a.addr {
		t.Fatal("an instance whose store is down was ejected")
	}
	if a.calls.Load() != 5 || b.calls.Load() != 0 || value(cl.m.retries) != 0 {
		t.Fatalf("calls a %d, b %d, retries %v: want every call on a, none retried", a.calls.Load(), b.calls.Load(), value(cl.m.retries))
	}
}

func TestRetryBudget(t *testing.T) {
	a, b := startInstance(t, "a", 0), startInstance(t, "b", 0)
	a.failing.Store(true)
	b.failing.Store(true)
	cl := newClient(t, Config{RetryBurst: 2, FailThreshold: 1000}, a, b)
	for i := 0; i < 10; i++ {
		if _, err := who(cl, uint64(i)); err == nil {
			t.Fatal("no error")
		} else if kind, _ := backend.Classify(err); kind != backend.KindSystem {
			t.Fatalf("kind %v", kind)
		}
	}
	retries := value(cl.m.retries)
	if retries < 2 || retries > 3 { // 2 banked + 10 calls × 0.1
		t.Fatalf("%v retries with a budget of 2 + 10%%", retries)
	}
	if value(cl.m.exhausted) == 0 {
		t.Fatal("budget never exhausted")
	}
	var final float64
	for _, in := range []*testInstance{a, b} {
		final += value(cl.m.final.WithLabelValues("who", in.addr))
	}
	if final != 10 {
		t.Fatalf("final system failures %v, want 10", final)
	}
}

func TestOverloadedInstanceEjected(t *testing.T) {
	a, b := startInstance(t, "a", 1), startInstance(t, "b", 0)
	cl := newClient(t, Config{EjectBase: 100 * time.Millisecond}, a, b)
	var uid uint64
	for uid = 1; cl.Owner(uid) != a.addr; uid++ {
	}
	// Occupy a's only slot.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _, _ = cl.Call(ctx, &backend.Request{UID: uid, Method: "slow"}) }()
	waitFor(t, "slot taken", func() bool { return len(a.srv.sem) == 1 })
	w, err := who(cl, uid)
	if err != nil || w != "b" {
		t.Fatalf("overloaded a: answered %q %v, want b", w, err)
	}
	if value(cl.m.ejections.WithLabelValues(a.addr)) != 1 {
		t.Fatal("overloaded instance not ejected")
	}
	cancel()
	wg.Wait()
	waitFor(t, "readmission", func() bool { return cl.Owner(uid) == a.addr })
}

func TestDeadlinePropagates(t *testing.T) {
	a := startInstance(t, "a", 0)
	cl := newClient(t, Config{}, a)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if _, err := cl.Call(ctx, &backend.Request{UID: 1, Method: "who"}); err != nil {
		t.Fatal(err)
	}
	if d := a.deadline.Load(); d <= 0 || d > 700 {
		t.Fatalf("server saw %d ms left", d)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	start := time.Now()
	_, err := cl.Call(ctx2, &backend.Request{UID: 1, Method: "slow"})
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("slow call: %v after %v", err, time.Since(start))
	}
	if value(cl.m.retries) != 0 {
		t.Fatal("a call past its deadline was retried")
	}
}

func TestDownInstance(t *testing.T) {
	a := startInstance(t, "a", 0)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	cl, err := NewClient(Config{Addrs: []string{a.addr, dead}, Auth: ClientAuth{Secret: testSecret}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for uid := uint64(1); uid < 50; uid++ {
		if w, err := who(cl, uid); err != nil || w != "a" {
			t.Fatalf("uid %d: %q %v", uid, w, err)
		}
	}
	if value(cl.m.up.WithLabelValues(dead)) != 0 {
		t.Fatal("dead instance not marked down")
	}
}

// An instance that comes (back) up is used at once: gRPC's reconnect
// backoff (up to 2 s) does not keep failing calls to it. Here it is the only
// instance, down for a while (ejected, its channel in backoff), then up:
// the very next call succeeds.
func TestInstanceUpAgainIsUsedAtOnce(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cl, err := NewClient(Config{Addrs: []string{addr}, Auth: ClientAuth{Secret: testSecret}, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, err := who(cl, 1); err == nil {
			t.Fatal("a call to a down instance succeeded")
		}
	}
	startInstanceOn(t, "a", addr, 0)
	start := time.Now()
	if w, err := who(cl, 1); err != nil || w != "a" {
		t.Fatalf("the first call after the instance came up: %q %v", w, err)
	}
	t.Logf("answered %v after the instance came up", time.Since(start))
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestParseURL(t *testing.T) {
	got, err := ParseURL("grpc://a:1, b:2,")
	if err != nil || len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"", "grpc://", "http://a:1", "grpc://,"} {
		if _, err := ParseURL(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
