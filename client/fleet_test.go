package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

// testSigner signs node lists by the agreed rule (docs/fleet.md).
type testSigner struct {
	id   uint32
	priv ed25519.PrivateKey
}

func newSigner(t *testing.T, id uint32) *testSigner {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &testSigner{id: id, priv: priv}
}

func (s *testSigner) pin() string {
	return fmt.Sprintf("%d:%s", s.id, hex.EncodeToString(s.priv.Public().(ed25519.PublicKey)))
}

func (s *testSigner) sign(l *pb.NodeList) *pb.SignedNodeList {
	b, _ := proto.Marshal(l)
	msg := append(append([]byte("longlink node list v1"), 0), b...)
	return &pb.SignedNodeList{List: b, KeyId: s.id, Signature: ed25519.Sign(s.priv, msg)}
}

func list(issued int64, addrs ...string) *pb.NodeList {
	l := &pb.NodeList{IssuedMs: issued, TtlS: 60, Race: 2, RaceStaggerMs: 100, BackoffMinMs: 20, BackoffMaxMs: 200}
	for _, a := range addrs {
		l.Nodes = append(l.Nodes, &pb.Node{Addr: a, Host: a})
	}
	return l
}

// fakeGW speaks just enough of the protocol: AUTH → AUTH_OK (after delay,
// with nodes), HEARTBEAT → PONG, and a GOAWAY on demand.
type fakeGW struct {
	t     *testing.T
	ln    net.Listener
	name  string
	delay atomic.Int64 // ns before AUTH_OK
	auths atomic.Int32
	nodes atomic.Pointer[pb.SignedNodeList]
	drain atomic.Pointer[pb.GoAway] // set: written on accept, before any AUTH, as a draining gateway does
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startFake(t *testing.T, name string) *fakeGW {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGW{t: t, ln: ln, name: name, conns: map[net.Conn]bool{}}
	t.Cleanup(g.stop)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns[c] = true
			g.mu.Unlock()
			go g.serve(c)
		}
	}()
	return g
}

func (g *fakeGW) addr() string { return g.ln.Addr().String() }

func (g *fakeGW) stop() {
	g.ln.Close()
	g.mu.Lock()
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
}

func (g *fakeGW) live() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

func (g *fakeGW) serve(c net.Conn) {
	defer func() {
		c.Close()
		g.mu.Lock()
		delete(g.conns, c)
		g.mu.Unlock()
	}()
	if g := g.drain.Load(); g != nil {
		body, _ := proto.Marshal(g)
		_, _ = c.Write(codec.AppendFrame(nil, codec.CmdGoAway, 0, 0, body))
		_, _ = c.Read(make([]byte, 512)) // linger until the client hangs up
		return
	}
	r := &frameReader{r: c, buf: make([]byte, 0, 4096)}
	for {
		f, err := r.next()
		if err != nil {
			return
		}
		switch f.Cmd {
		case codec.CmdAuth:
			time.Sleep(time.Duration(g.delay.Load()))
			body, _ := proto.Marshal(&pb.AuthOK{Uid: 1, Node: g.name, Nodes: g.nodes.Load()})
			if _, err := c.Write(codec.AppendFrame(nil, codec.CmdAuthOK, 0, 0, body)); err != nil {
				return
			}
			g.auths.Add(1)
		case codec.CmdHeartbeat:
			_, _ = c.Write(codec.AppendFrame(nil, codec.CmdPong, 0, 0, nil))
		}
	}
}

// goAway sends every connection a GOAWAY and closes it.
func (g *fakeGW) goAway(ga *pb.GoAway) {
	body, _ := proto.Marshal(ga)
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		_, _ = c.Write(codec.AppendFrame(nil, codec.CmdGoAway, 0, 0, body))
		c.Close()
	}
}

func dialFleet(t *testing.T, o Options) *Client {
	t.Helper()
	o.Token = "t"
	if o.BackoffMin == 0 {
		o.BackoffMin, o.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	}
	o.DialTimeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls ok until it holds (testutil.WaitFor).
func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	testutil.WaitFor(t, what, d, ok)
}

func TestVerifyNodeList(t *testing.T) {
	s, other := newSigner(t, 7), newSigner(t, 7)
	pin, _ := ParseFleetPin(s.pin())
	sl := s.sign(list(1, "a:1"))
	if l, err := VerifyNodeList(sl, []FleetPin{pin}); err != nil || l.Nodes[0].Addr != "a:1" {
		t.Fatalf("good list: %v %v", l, err)
	}
	if _, err := VerifyNodeList(other.sign(list(1, "a:1")), []FleetPin{pin}); !errors.Is(err, ErrBadListSig) {
		t.Fatalf("a list signed by another key with the same id: %v", err)
	}
	bad := proto.Clone(sl).(*pb.SignedNodeList)
	bad.List = append([]byte(nil), bad.List...)
	bad.List[len(bad.List)-1] ^= 1
	if _, err := VerifyNodeList(bad, []FleetPin{pin}); !errors.Is(err, ErrBadListSig) {
		t.Fatalf("a tampered list: %v", err)
	}
	sl8 := newSigner(t, 8).sign(list(1, "a:1"))
	if _, err := VerifyNodeList(sl8, []FleetPin{pin}); !errors.Is(err, ErrUnpinnedList) {
		t.Fatalf("an unpinned key: %v", err)
	}
	for _, p := range []string{"", "7", "x:00", "7:abcd", "7:" + hex.EncodeToString(make([]byte, 31))} {
		if _, err := ParseFleetPin(p); err == nil {
			t.Errorf("pin %q accepted", p)
		}
	}
}

// TestFleetListFromAuthOKThenFollowed: a seed's AUTH_OK carries a signed
// list; after the seed goes away the client reconnects to the list's
// first address, not the seed (the seed is banned after failing, and
// the list wins over the seeds anyway). The list survives a restart in
// the cache file. A list signed by an unpinned key is ignored.
func TestFleetListFromAuthOKThenFollowed(t *testing.T) {
	s := newSigner(t, 1)
	seed, a, b := startFake(t, "seed"), startFake(t, "a"), startFake(t, "b")
	seed.nodes.Store(s.sign(list(100, a.addr(), b.addr())))
	file := filepath.Join(t.TempDir(), "nodes.pb")
	var got []time.Duration
	var mu sync.Mutex
	c := dialFleet(t, Options{Seeds: []string{seed.addr()}, FleetPins: []string{s.pin()}, NodeListFile: file,
		OnReconnect: func(d time.Duration, _ string) { mu.Lock(); got = append(got, d); mu.Unlock() }})
	if c.AuthOK().Node != "seed" {
		t.Fatalf("first connection went to %q", c.AuthOK().Node)
	}
	if l, _ := c.NodeList(); l == nil || len(l.Nodes) != 2 {
		t.Fatalf("list from AUTH_OK not taken: %v", l)
	}
	seed.stop()
	waitFor(t, "reconnect to a", 5*time.Second, func() bool { ok := c.AuthOK(); return c.State() == Connected && ok.Node == "a" })
	st := c.Reconnects()
	if st.Reconnects != 1 || st.Addr != a.addr() || st.Last <= 0 || st.Last > 3*time.Second {
		t.Fatalf("reconnect stats %+v", st)
	}
	mu.Lock()
	if len(got) != 1 {
		t.Fatalf("OnReconnect heard %v", got)
	}
	mu.Unlock()
	c.Close()

	// A new client with the cache file and a dead seed goes to the list.
	c2 := dialFleet(t, Options{Seeds: []string{seed.addr()}, FleetPins: []string{s.pin()}, NodeListFile: file})
	if n := c2.AuthOK().Node; n != "a" {
		t.Fatalf("with the cached list the client went to %q", n)
	}
	c2.Close()

	// Unpinned: the list is ignored, the client stays on its seeds.
	a.nodes.Store(newSigner(t, 2).sign(list(200, b.addr())))
	c3 := dialFleet(t, Options{Seeds: []string{a.addr()}, FleetPins: []string{s.pin()}})
	if l, _ := c3.NodeList(); l != nil {
		t.Fatalf("an unpinned list was accepted: %v", l)
	}
}

// TestFleetRaceFirstAuthWins: the first address answers AUTH slowly, the
// second at once: the second wins, started one stagger after the first,
// and the slow one's connection is closed.
func TestFleetRaceFirstAuthWins(t *testing.T) {
	s := newSigner(t, 1)
	slow, fast := startFake(t, "slow"), startFake(t, "fast")
	slow.delay.Store(int64(2 * time.Second))
	file := filepath.Join(t.TempDir(), "nodes.pb")
	pre := &Client{opts: Options{}, fleet: newFleet(nil, []FleetPin{mustPin(t, s.pin())}, file)}
	if ok, err := pre.fleet.accept(s.sign(list(time.Now().UnixMilli(), slow.addr(), fast.addr()))); !ok || err != nil {
		t.Fatal(ok, err)
	}
	start := time.Now()
	c := dialFleet(t, Options{Seeds: []string{"127.0.0.1:1"}, FleetPins: []string{s.pin()}, NodeListFile: file})
	took := time.Since(start)
	if n := c.AuthOK().Node; n != "fast" {
		t.Fatalf("race won by %q", n)
	}
	if took < 90*time.Millisecond || took > 1500*time.Millisecond { // the slow racer needs 2 s
		t.Fatalf("the race took %v: want about the list's 100ms stagger", took)
	}
	waitFor(t, "the slow racer closed", 3*time.Second, func() bool { return slow.live() == 0 && slow.auths.Load() <= 1 })
	if fast.live() != 1 {
		t.Fatalf("fast has %d connections", fast.live())
	}
}

func mustPin(t *testing.T, s string) FleetPin {
	p, err := ParseFleetPin(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFleetBanBackoffAndSeedFallback: bans double from 1 s to 5 min and
// clear on success; with every listed address banned the seeds are used.
func TestFleetBanBackoffAndSeedFallback(t *testing.T) {
	now := time.Unix(1000, 0)
	s := newSigner(t, 1)
	f := newFleet([]string{"seed:1"}, []FleetPin{mustPin(t, s.pin())}, "")
	f.now = func() time.Time { return now }
	if _, err := f.accept(s.sign(list(now.UnixMilli(), "a:1", "b:1"))); err != nil {
		t.Fatal(err)
	}
	var ds []time.Duration
	for range 11 {
		ds = append(ds, f.fail("a:1"))
	}
	if ds[0] != time.Second || ds[1] != 2*time.Second || ds[8] != 256*time.Second || ds[9] != 5*time.Minute || ds[10] != 5*time.Minute {
		t.Fatalf("ban durations %v", ds)
	}
	if c := f.candidates(); len(c) != 1 || c[0] != "b:1" {
		t.Fatalf("candidates with a banned %v", c)
	}
	f.fail("b:1")
	if c := f.candidates(); len(c) != 1 || c[0] != "seed:1" {
		t.Fatalf("every listed address banned: candidates %v, want the seed", c)
	}
	now = now.Add(1500 * time.Millisecond) // b's 1 s ban is over, a's 5 min one is not
	if c := f.candidates(); len(c) != 1 || c[0] != "b:1" {
		t.Fatalf("after b's ban: %v", c)
	}
	f.ok("a:1")
	if c := f.candidates(); len(c) != 2 || c[0] != "a:1" {
		t.Fatalf("after a's success: %v", c)
	}
	// Older lists are ignored, newer ones replace; stale after ttl_s.
	if ok, _ := f.accept(s.sign(list(now.UnixMilli()-10_000, "old:1"))); ok {
		t.Fatal("an older list replaced a newer one")
	}
	if ok, _ := f.accept(s.sign(list(now.UnixMilli(), "new:1"))); !ok {
		t.Fatal("a newer list was refused")
	}
	if _, stale := f.current(); stale {
		t.Fatal("a fresh list is stale")
	}
	now = now.Add(61 * time.Second)
	if l, stale := f.current(); !stale || l == nil {
		t.Fatal("a list past its ttl_s is not stale")
	}
}

// TestFleetGoAwayRedirectFollowsNodes: a GOAWAY 3014 with a list moves the
// client to the list's host at once (no backoff), and the redirecting host
// is avoided.
func TestFleetGoAwayRedirectFollowsNodes(t *testing.T) {
	s := newSigner(t, 1)
	a, b := startFake(t, "a"), startFake(t, "b")
	c := dialFleet(t, Options{Seeds: []string{a.addr()}, FleetPins: []string{s.pin()}, BackoffMin: 6 * time.Second, BackoffMax: 8 * time.Second})
	start := time.Now()
	l := list(time.Now().UnixMilli(), a.addr(), b.addr())
	l.BackoffMinMs, l.BackoffMaxMs = 6000, 8000
	a.goAway(&pb.GoAway{Code: uint32(codec.CodeRedirect), Message: "evacuating", Nodes: s.sign(l)})
	waitFor(t, "redirect to b", 3*time.Second, func() bool { ok := c.AuthOK(); return c.State() == Connected && ok.Node == "b" })
	if d := time.Since(start); d > 1800*time.Millisecond {
		t.Fatalf("redirect took %v: the backoff (≥ 3 s) was applied", d)
	}
}

// TestFleetFetchNodesURL: without a list the client fetches one from
// NodesURL (protobuf), and uses it from the next attempt.
func TestFleetFetchNodesURL(t *testing.T) {
	s := newSigner(t, 1)
	seed, a := startFake(t, "seed"), startFake(t, "a")
	var gets atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		if r.Header.Get("Accept") != "application/x-protobuf" {
			http.Error(w, "want protobuf", 406)
			return
		}
		b, _ := proto.Marshal(s.sign(list(time.Now().UnixMilli(), a.addr())))
		_, _ = w.Write(b)
	}))
	defer hs.Close()
	c := dialFleet(t, Options{Seeds: []string{seed.addr()}, FleetPins: []string{s.pin()}, NodesURL: hs.URL + "/v1/nodes"})
	waitFor(t, "the fetched list", 3*time.Second, func() bool { l, _ := c.NodeList(); return l != nil })
	seed.goAway(&pb.GoAway{Code: uint32(codec.CodeShutdown)})
	waitFor(t, "move to a", 5*time.Second, func() bool { ok := c.AuthOK(); return c.State() == Connected && ok.Node == "a" })
	if gets.Load() != 1 {
		t.Fatalf("%d fetches", gets.Load())
	}
}

// TestFleetGoAwayRedirectSameListGoesNow: the GOAWAY 3014 carries the list
// the client already holds (from AUTH_OK, not newer): it still moves at
// once instead of after the list's backoff (6–8 s, at least 3 s with jitter).
func TestFleetGoAwayRedirectSameListGoesNow(t *testing.T) {
	s := newSigner(t, 1)
	a, b := startFake(t, "a"), startFake(t, "b")
	l := list(time.Now().UnixMilli(), a.addr(), b.addr())
	l.BackoffMinMs, l.BackoffMaxMs = 6000, 8000
	sl := s.sign(l)
	a.nodes.Store(sl)
	c := dialFleet(t, Options{Seeds: []string{a.addr()}, FleetPins: []string{s.pin()}})
	if got, _ := c.NodeList(); got == nil {
		t.Fatal("no list from AUTH_OK")
	}
	start := time.Now()
	a.goAway(&pb.GoAway{Code: uint32(codec.CodeRedirect), Message: "evacuating", Nodes: sl})
	waitFor(t, "redirect to b", 3*time.Second, func() bool { ok := c.AuthOK(); return c.State() == Connected && ok.Node == "b" })
	if d := time.Since(start); d > 1800*time.Millisecond {
		t.Fatalf("redirect with the same list took %v: the backoff was applied", d)
	}
}

// TestDrainingHostAtConnect: a host that is draining answers a new
// connection with GOAWAY before any AUTH; the client follows its redirect
// instead of taking it for a broken server and retrying the same host.
func TestDrainingHostAtConnect(t *testing.T) {
	a, b := startFake(t, "a"), startFake(t, "b")
	a.drain.Store(&pb.GoAway{Code: uint32(codec.CodeShutdown), Message: "server draining", ReconnectAfterMs: 10, Redirect: b.addr()})
	c := dialFleet(t, Options{Seeds: []string{a.addr()}, BackoffMin: 6 * time.Second, BackoffMax: 8 * time.Second})
	if ok := c.AuthOK(); ok.Node != "b" {
		t.Fatalf("connected to %q, want b (the draining host's redirect)", ok.Node)
	}
	if n := a.auths.Load(); n != 0 {
		t.Fatalf("the draining host answered %d AUTHs", n)
	}
}
