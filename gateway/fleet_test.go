package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/admission"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

type testFleet struct {
	hub  *push.Hub
	keys *fleet.KeyRing
	gws  map[string]*Server
}

// startFleet runs one NATS (a push hub) and a gateway per host id; the
// region table puts loopback clients in north/telecom; host "c" is in the
// south.
func startTestFleet(t *testing.T, hosts ...string) *testFleet {
	t.Helper()
	return startTestFleetWith(t, nil, hosts...)
}

func startTestFleetWith(t *testing.T, mod func(*Config), hosts ...string) *testFleet {
	t.Helper()
	hub, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	keys, _, err := fleet.LoadOrCreateKeys(t.TempDir() + "/" + fleet.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := fleet.ParseTable(strings.NewReader("127.0.0.0/8 north telecom\n"))
	if err != nil {
		t.Fatal(err)
	}
	tf := &testFleet{hub: hub, keys: keys, gws: map[string]*Server{}}
	for _, h := range hosts {
		region := "north"
		if h == "c" {
			region = "south"
		}
		tf.gws[h] = startServer(t, func(c *Config) {
			c.NATS, c.NATSOptions = hub.NATSURL(), []nats.Option{hub.Auth(push.RoleGateway)}
			c.Node = h + "/w0"
			c.AdminToken = "test-admin-token"
			c.Fleet = &FleetConfig{Host: h, Region: region, Carrier: "telecom", Table: tab, Keys: keys, Interval: 100 * time.Millisecond}
			if mod != nil {
				mod(c)
			}
		})
	}
	for _, s := range tf.gws {
		checkFor(t, 5*time.Second, func() error {
			if n := len(s.Fleet().View().Hosts()); n != len(hosts) {
				return fmt.Errorf("%s sees %d hosts", s.Fleet().Host(), n)
			}
			return nil
		})
	}
	return tf
}

func listHosts(nl *pb.NodeList) string {
	var out []string
	for _, n := range nl.Nodes {
		out = append(out, n.Host)
	}
	return strings.Join(out, " ")
}

func TestFleetNodeListsInAuthOKAndHTTP(t *testing.T) {
	tf := startTestFleet(t, "a", "b", "c")
	a, b := tf.gws["a"], tf.gws["b"]
	// Load a: 30 of its 32 connections; once announced, lists put b
	// before a. (A cap, because weights also count the process's CPU,
	// which all three in-process hosts share: 30 connections of the
	// default 20,000 leave a and b tied on a busy CI host.)
	sw := a.Switches()
	sw.MaxConns = 32
	if err := a.SetSwitches(sw, "test"); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		w := dialWire(t, a.Addr())
		w.auth(token(t, uint64(100+i), "", time.Hour), "")
	}
	// Both views must have it: a's strict list below comes from a's own
	// view, which learns a's load from a's announcement like any other.
	checkFor(t, 5*time.Second, func() error {
		for _, s := range []*Server{a, b} {
			if h, _ := s.Fleet().View().Host("a"); h.Conns < 30 {
				return fmt.Errorf("%s sees a with %d connections", s.Fleet().Host(), h.Conns)
			}
		}
		return nil
	})
	b.Fleet().Lists().Refresh(true)
	a.Fleet().Lists().Refresh(true)
	w := dialWire(t, a.Addr())
	ok := w.auth(token(t, 7, "", time.Hour), "")
	nl, err := fleet.Verify(ok.Nodes, tf.keys.Pins())
	if err != nil {
		t.Fatalf("AUTH_OK nodes: %v", err)
	}
	if nl.Region != "north" || nl.Carrier != "telecom" || nl.TtlS == 0 || nl.Race != 2 {
		t.Fatalf("list header %+v", nl)
	}
	// Every variant: the north hosts first (b, less loaded, usually
	// first), the south host last.
	if got := listHosts(nl); !strings.HasSuffix(got, " c") || len(nl.Nodes) != 3 {
		t.Fatalf("AUTH_OK list %q: want the north hosts then c", got)
	}
	if got := listHosts(mustVerify(t, tf, a.Fleet().Lists().SignedList(fleet.Place{Region: "north", Carrier: "telecom"}, false, 0))); got != "b a c" {
		t.Fatalf("strict order %q, want b a c (a is loaded)", got)
	}

	// An operator's POST /fleet/lists: CONFIG with the client's list.
	if n := a.SendNodeLists("test"); n != 31 {
		t.Fatalf("lists sent to %d clients, want 31", n)
	}
	f := w.expect(codec.CmdConfig, 2*time.Second)
	var cc pb.ClientConfig
	if err := proto.Unmarshal(f.Body, &cc); err != nil {
		t.Fatal(err)
	}
	if got := listHosts(mustVerify(t, tf, cc.Nodes)); len(cc.Nodes.List) == 0 || !strings.HasSuffix(got, " c") {
		t.Fatalf("CONFIG nodes %q", got)
	}

	addr, err := a.ServeHTTP(HTTPConfig{Addr: "127.0.0.1:0"}, false)
	if err != nil {
		t.Fatal(err)
	}
	// JSON form.
	resp, err := http.Get("http://" + addr + "/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	var js struct {
		List, Signature string
		KeyID           uint32 `json:"key_id"`
		Nodes           []struct{ Addr, Host string }
	}
	err = json.NewDecoder(resp.Body).Decode(&js)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v1/nodes: %d %v", resp.StatusCode, err)
	}
	list, _ := base64.StdEncoding.DecodeString(js.List)
	sig, _ := base64.StdEncoding.DecodeString(js.Signature)
	if nl, err := fleet.Verify(&pb.SignedNodeList{List: list, KeyId: js.KeyID, Signature: sig}, tf.keys.Pins()); err != nil || len(nl.Nodes) != 3 || len(js.Nodes) != 3 || js.Nodes[0].Addr == "" {
		t.Fatalf("JSON list: %v %v %+v", nl, err, js.Nodes)
	}
	// Protobuf form.
	req, _ := http.NewRequest("GET", "http://"+addr+"/v1/nodes", nil)
	req.Header.Set("Accept", "application/x-protobuf")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var sl pb.SignedNodeList
	if err := proto.Unmarshal(raw, &sl); err != nil || resp.Header.Get("Content-Type") != "application/x-protobuf" {
		t.Fatalf("protobuf list: %v %q", err, resp.Header.Get("Content-Type"))
	}
	mustVerify(t, tf, &sl)
}

func mustVerify(t *testing.T, tf *testFleet, sl *pb.SignedNodeList) *pb.NodeList {
	t.Helper()
	nl, err := fleet.Verify(sl, tf.keys.Pins())
	if err != nil {
		t.Fatal(err)
	}
	return nl
}

// expectRedirect reads frames until a GOAWAY and wants it 3014 with a
// verified list that does not name host.
func expectRedirect(t *testing.T, tf *testFleet, w *wire, host string, timeout time.Duration) *pb.GoAway {
	t.Helper()
	for {
		f, err := w.next(timeout)
		if err != nil {
			t.Fatalf("want GOAWAY 3014: %v", err)
		}
		if f.Cmd != codec.CmdGoAway {
			continue // CONFIG and the like
		}
		var g pb.GoAway
		if err := proto.Unmarshal(f.Body, &g); err != nil {
			t.Fatal(err)
		}
		if codec.Code(g.Code) != codec.CodeRedirect {
			t.Fatalf("GOAWAY code %d, want 3014", g.Code)
		}
		nl := mustVerify(t, tf, g.Nodes)
		if strings.Contains(" "+listHosts(nl)+" ", " "+host+" ") || len(nl.Nodes) == 0 {
			t.Fatalf("redirect from %s lists %q", host, listHosts(nl))
		}
		return &g
	}
}

func TestFleetEvacuateAtRate(t *testing.T) {
	tf := startTestFleet(t, "a", "b")
	a, b := tf.gws["a"], tf.gws["b"]
	const n, rate = 20, 20.0
	ws := make([]*wire, n)
	for i := range ws {
		ws[i] = dialWire(t, a.Addr())
		ws[i].auth(token(t, uint64(200+i), "", time.Hour), "")
	}
	start := time.Now()
	if err := a.Evacuate(rate, true, "test"); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		expectRedirect(t, tf, w, "a", 5*time.Second)
	}
	took := time.Since(start)
	// 20 at 20/s: about a second (jittered), never a burst.
	if took < 500*time.Millisecond || took > 4*time.Second {
		t.Fatalf("evacuated %d at %v/s in %v", n, rate, took)
	}
	t.Logf("evacuated %d connections at %v/s (jittered) in %v", n, rate, took)
	// a is listed by nobody while evacuating, and again once it stops.
	checkFor(t, 3*time.Second, func() error {
		b.Fleet().Lists().Refresh(true)
		if got := listHosts(mustVerify(t, tf, b.Fleet().Lists().SignedList(fleet.Place{Region: "north"}, false, 0))); got != "b" {
			return fmt.Errorf("b lists %q while a evacuates", got)
		}
		return nil
	})
	if !a.StopEvacuation("test") {
		t.Fatal("no evacuation to stop")
	}
	checkFor(t, 3*time.Second, func() error {
		b.Fleet().Lists().Refresh(true)
		if got := listHosts(mustVerify(t, tf, b.Fleet().Lists().SignedList(fleet.Place{Region: "north"}, false, 0))); !strings.Contains(got, "a") {
			return fmt.Errorf("b lists %q after a's evacuation stopped", got)
		}
		return nil
	})
	if v := a.fl().evacuated; v == nil {
		t.Fatal("no evacuation metric")
	}
}

func TestFleetDrainAndDegradeRedirect(t *testing.T) {
	tf := startTestFleet(t, "a", "b")
	a, b := tf.gws["a"], tf.gws["b"]

	// Degrade level 3, set over NATS by the admin role on host b only:
	// b's clients get GOAWAY 3014 naming a; a is untouched.
	wb := dialWire(t, b.Addr())
	wb.auth(token(t, 1, "", time.Hour), "")
	nc, err := push.Connect(tf.hub.NATSURL(), "admin", nil, tf.hub.Auth(push.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reps, err := fleet.Ask(ctx, nc, "b", fleet.AdminRequest{Op: "PUT /switches", Body: json.RawMessage(`{"degrade":3,"redirect":"10.9.9.9:7100"}`), By: "tester"}, 300*time.Millisecond)
	if err != nil || len(reps) != 1 || !reps[0].OK || reps[0].Host != "b" {
		t.Fatalf("admin over NATS: %+v %v", reps, err)
	}
	if b.DegradeLevel() != 3 || a.DegradeLevel() != 0 {
		t.Fatalf("degrade a=%d b=%d", a.DegradeLevel(), b.DegradeLevel())
	}
	g := expectRedirect(t, tf, wb, "b", 3*time.Second)
	if g.Redirect != "10.9.9.9:7100" {
		t.Fatalf("old redirect field %q: kept for older clients", g.Redirect)
	}
	// A bad switch over NATS is refused with the HTTP API's message.
	reps, _ = fleet.Ask(ctx, nc, "b", fleet.AdminRequest{Op: "PUT /switches", Body: json.RawMessage(`{"nonsense":1}`), By: "tester"}, 300*time.Millisecond)
	if len(reps) != 1 || reps[0].OK || !strings.Contains(reps[0].Error, "unknown switch") {
		t.Fatalf("bad switch: %+v", reps)
	}

	// Drain a: its clients are redirected to b with a list.
	wa := dialWire(t, a.Addr())
	wa.auth(token(t, 2, "", time.Hour), "")
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	go func() { _ = a.Shutdown(sctx) }()
	expectRedirect(t, tf, wa, "a", 5*time.Second)
	// a says goodbye: b forgets it at once.
	checkFor(t, 5*time.Second, func() error {
		if _, ok := b.Fleet().View().Host("a"); ok {
			return fmt.Errorf("b still sees a")
		}
		return nil
	})
}

// TestFleetRouterForgetsDeadHost: when a host leaves the fleet view without
// a goodbye (its NATS link cut), the router drops its users within the
// fleet expiry, not the router's 10 s node timeout.
func TestFleetRouterForgetsDeadHost(t *testing.T) {
	tf := startTestFleet(t, "a", "b")
	a := tf.gws["a"]
	nc, err := push.Connect(tf.hub.NATSURL(), "router watch", nil, tf.hub.Auth(push.RoleRouter))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	v, stop, err := fleet.Watch(nc, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	v.OnLeave(func(h fleet.Host) {
		for _, w := range h.Workers {
			tf.hub.Router().ForgetNode(w)
		}
	})
	checkFor(t, 3*time.Second, func() error {
		if _, ok := v.Host("a"); !ok {
			return fmt.Errorf("the router's view has no a")
		}
		return nil
	})
	w := dialWire(t, a.Addr())
	w.auth(token(t, 42, "", time.Hour), "")
	waitOnline(t, tf.hub, 42, 1)
	a.fl().nc.Close() // a's fleet link is cut: no goodbye, no announcements
	start := time.Now()
	checkFor(t, 3*time.Second, func() error {
		if n := len(tf.hub.Router().Registry().Lookup(42, nil)); n != 0 {
			return fmt.Errorf("uid 42 still on %d nodes", n)
		}
		return nil
	})
	t.Logf("router forgot the dead host's users %v after its link was cut (fleet expiry 300ms)", time.Since(start))
}

// TestFleetAuthOKNoAllocs: the node list in AUTH_OK is a cached per-place
// slice: encoding AUTH_OK with it allocates nothing (as without a fleet)
// and no connection holds a copy.
func TestFleetAuthOKNoAllocs(t *testing.T) {
	tf := startTestFleet(t, "a", "b")
	a := tf.gws["a"]
	w := dialWire(t, a.Addr())
	if ok := w.auth(token(t, 9, "dev", time.Hour), "dev"); ok.Nodes == nil {
		t.Fatal("no nodes in AUTH_OK")
	}
	var c *conn
	a.eachSession(func(x *conn) { c = x })
	peer := netip.MustParseAddrPort(w.c.LocalAddr().String()) // what the loop reads from the socket
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(200, func() { buf = a.appendAuthOKWith(buf[:0], c, a.nodesAt(peer, c.id, false)) }); n > 0 {
		t.Fatalf("AUTH_OK with the node list allocates %v per call", n)
	}
	f, _, err := codec.Split(buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ok pb.AuthOK
	if err := proto.Unmarshal(f.Body, &ok); err != nil || ok.Uid != 9 {
		t.Fatalf("AUTH_OK %v %v", &ok, err)
	}
	mustVerify(t, tf, ok.Nodes)
}

// TestFleetNodesHintsBounded: ?region= hints name only places some host
// has; anything else is the unknown place, so hints cannot grow the list
// cache.
func TestFleetNodesHintsBounded(t *testing.T) {
	tf := startTestFleet(t, "a", "c") // north and south
	a := tf.gws["a"]
	a.cfg.Fleet.Table = nil // every address unknown: hints apply
	addr, err := a.ServeHTTP(HTTPConfig{Addr: "127.0.0.1:0"}, false)
	if err != nil {
		t.Fatal(err)
	}
	get := func(q string) *pb.NodeList {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/nodes?"+q, nil)
		req.Header.Set("Accept", "application/x-protobuf")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var sl pb.SignedNodeList
		if err := proto.Unmarshal(raw, &sl); err != nil {
			t.Fatal(err)
		}
		return mustVerify(t, tf, &sl)
	}
	if nl := get("region=south"); nl.Region != "south" || nl.Nodes[0].Host != "c" {
		t.Fatalf("south hint: %v %q", nl.Region, listHosts(nl))
	}
	before := a.Fleet().Lists().Places()
	for i := range 50 {
		if nl := get(fmt.Sprintf("region=r%d&carrier=x%d", i, i)); nl.Region != "" {
			t.Fatalf("unknown hint kept: %q", nl.Region)
		}
	}
	if n := a.Fleet().Lists().Places(); n > before+1 {
		t.Fatalf("50 made-up regions grew the cache from %d to %d places", before, n)
	}
	if resp, err := http.Get("http://" + addr + "/v1/nodes?region=a.b"); err != nil || resp.StatusCode != 400 {
		t.Fatalf("bad tag: %v %v", resp.StatusCode, err)
	}
}

func TestFleetAdmissionLevel(t *testing.T) {
	for _, c := range []struct {
		th   uint32
		want int
	}{{admission.MaxLevel, 0}, {63*128 + 5, 1}, {4*128 + 100, 1}, {3*128 + 7, 2}, {2 * 128, 3}, {0, 3}} {
		if got := admissionLevel(c.th); got != c.want {
			t.Errorf("admissionLevel(%d) = %d, want %d", c.th, got, c.want)
		}
	}
}

// TestFleetEncrypted: an encrypted client gets the list in the AUTH_OK
// inside HELLO_OK (built on the handshake pool from the address read on
// the loop), and the drain's GOAWAY 3014 sealed.
func TestFleetEncrypted(t *testing.T) {
	tf := startTestFleetWith(t, func(c *Config) { c.ServerKeys, c.Encryption = testServerRing, EncryptionRequired }, "a", "b")
	a := tf.gws["a"]
	w, ok := dialSecure(t, a.Addr(), token(t, 5, "", time.Hour), "", true)
	nl := mustVerify(t, tf, ok.Nodes)
	if nl.Region != "north" || len(nl.Nodes) != 2 {
		t.Fatalf("encrypted AUTH_OK list %v", nl)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { _ = a.Shutdown(ctx) }()
	f := w.expectSealed(codec.CmdGoAway, 5*time.Second)
	var g pb.GoAway
	if err := proto.Unmarshal(f.Body, &g); err != nil || codec.Code(g.Code) != codec.CodeRedirect {
		t.Fatalf("sealed GOAWAY %v %v", &g, err)
	}
	if got := listHosts(mustVerify(t, tf, g.Nodes)); got != "b" {
		t.Fatalf("drain list %q, want b", got)
	}
}

// TestFleetEvacuateRateIsPerHost: a host's workers split the evacuation
// rate (each gets the same request, as the supervisor forwards it), so
// the host as a whole sends its clients away at the given rate.
func TestFleetEvacuateRateIsPerHost(t *testing.T) {
	tf := startTestFleet(t, "b")
	var ws []*Server
	for i := range 2 { // host a: two workers
		ws = append(ws, startServer(t, func(c *Config) {
			c.NATS, c.NATSOptions = tf.hub.NATSURL(), []nats.Option{tf.hub.Auth(push.RoleGateway)}
			c.Node = fmt.Sprintf("a/w%d", i)
			c.AdminToken = "test-admin-token"
			c.Fleet = &FleetConfig{Host: "a", Region: "north", Keys: tf.keys, Interval: 100 * time.Millisecond}
		}))
	}
	checkFor(t, 5*time.Second, func() error {
		for _, s := range ws {
			if h, ok := s.Fleet().View().Host("a"); !ok || len(h.Workers) != 2 {
				return fmt.Errorf("%s: host a has workers %v", s.Node(), h.Workers)
			}
			if _, ok := s.Fleet().View().Host("b"); !ok {
				return fmt.Errorf("%s does not see b", s.Node())
			}
		}
		return nil
	})
	const perWorker, rate = 10, 10.0 // 20 connections at 10/s for the host: ~2 s
	var clients []*wire
	for i, s := range ws {
		for j := range perWorker {
			w := dialWire(t, s.Addr())
			w.auth(token(t, uint64(300+i*100+j), "", time.Hour), "")
			clients = append(clients, w)
		}
	}
	start := time.Now()
	for _, s := range ws {
		if err := s.Evacuate(rate, false, "test"); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range clients {
		expectRedirect(t, tf, w, "a", 5*time.Second)
	}
	took := time.Since(start)
	t.Logf("host of 2 workers: %d connections at %v/s in %v", len(clients), rate, took)
	if took < 1500*time.Millisecond {
		t.Fatalf("20 connections left a host evacuating at %v/s in %v: each worker used the host's rate", rate, took)
	}
}

// TestFleetAdminAuditNamesCaller: a change over NATS is audited on the
// host with the NATS caller's name.
func TestFleetAdminAuditNamesCaller(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	tf := startTestFleetWith(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(p)
		}), nil))
	}, "a")
	nc, err := push.Connect(tf.hub.NATSURL(), "admin", nil, tf.hub.Auth(push.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if reps, err := fleet.Ask(ctx, nc, "a", fleet.AdminRequest{Op: "PUT /switches", Body: json.RawMessage(`{"degrade":1}`), By: "ops@laptop"}, 200*time.Millisecond); err != nil || !reps[0].OK {
		t.Fatalf("%v %v", reps, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), `msg="audit: switches changed" by="nats admin ops@laptop"`) {
		t.Fatalf("no audit line naming the NATS caller in:\n%s", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
