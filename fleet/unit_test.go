package fleet

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
)

func testRing(t *testing.T) *KeyRing {
	t.Helper()
	k, err := GenerateKey(1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewKeyRing([]SigningKey{k}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSignVerify(t *testing.T) {
	r := testRing(t)
	list, _ := proto.Marshal(&pb.NodeList{Nodes: []*pb.Node{{Addr: "10.0.0.1:7100", Host: "a"}}, IssuedMs: 42})
	sl := r.Sign(list)
	pins := r.Pins()
	nl, err := Verify(sl, pins)
	if err != nil || nl.IssuedMs != 42 || nl.Nodes[0].Addr != "10.0.0.1:7100" {
		t.Fatalf("verify: %v %v", nl, err)
	}
	// The signature covers the context string: a bare signature over the
	// list must not verify.
	if string(SignedMessage(list)[:22]) != "longlink node list v1\x00" {
		t.Fatalf("signed message prefix %q", SignedMessage(list)[:22])
	}
	bad := proto.Clone(sl).(*pb.SignedNodeList)
	bad.List = append([]byte(nil), bad.List...)
	bad.List[len(bad.List)-1] ^= 1
	if _, err := Verify(bad, pins); err != ErrBadSignature {
		t.Fatalf("tampered list: %v", err)
	}
	other := testRing(t)
	if _, err := Verify(sl, other.Pins()); err != ErrBadSignature {
		t.Fatalf("same id, other key: %v", err) // id 1 pinned, but another key
	}
	unk := proto.Clone(sl).(*pb.SignedNodeList)
	unk.KeyId = 7
	if _, err := Verify(unk, pins); err != ErrUnknownKey {
		t.Fatalf("unknown key: %v", err)
	}
	// Pins round-trip through their text form.
	p, err := ParsePin(pins[0].String())
	if err != nil || p.ID != 1 || !p.Public.Equal(pins[0].Public) {
		t.Fatalf("pin round trip: %v %v", p, err)
	}
	for _, s := range []string{"", "1", "0:" + strings.Repeat("0", 64), "1:zz", "1:" + strings.Repeat("0", 62)} {
		if _, err := ParsePin(s); err == nil {
			t.Errorf("ParsePin(%q) accepted", s)
		}
	}
}

func TestKeyFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFile)
	r, created, err := LoadOrCreateKeys(path)
	if err != nil || !created || r.Active() != 1 {
		t.Fatalf("create: %v %v %v", r, created, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	r2, err := r.Rotate()
	if err != nil || r2.Active() != 2 || len(r2.Pins()) != 2 || r2.Pins()[0].ID != 2 {
		t.Fatalf("rotate: %v %v", r2, err)
	}
	if err := SaveKeys(path, r2); err != nil {
		t.Fatal(err)
	}
	r3, created, err := LoadOrCreateKeys(path)
	if err != nil || created || r3.Active() != 2 {
		t.Fatalf("reload: %v %v", r3, err)
	}
	// A list signed by the old key still verifies for a client pinning
	// both; the new key signs from now on.
	list := []byte{0x08, 0x01}
	if sl := r3.Sign(list); sl.KeyId != 2 {
		t.Fatalf("signed by %d", sl.KeyId)
	} else if _, err := Verify(sl, r.Pins()); err != ErrUnknownKey {
		t.Fatalf("old pins accepted the new key: %v", err)
	}
	if _, err := r3.Retire(2); err == nil {
		t.Fatal("retired the active key")
	}
	r4, err := r3.Retire(1)
	if err != nil || len(r4.IDs()) != 1 {
		t.Fatalf("retire: %v %v", r4, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeys(path); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable keys accepted: %v", err)
	}
}

func TestRegionTable(t *testing.T) {
	tab, err := ParseTable(strings.NewReader(`
# test table
10.0.0.0/8      north          # a region without a carrier
10.1.0.0/16     north telecom
10.1.2.0/24     south mobile
2001:db8::/32   east unicom
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ip   string
		want Place
		ok   bool
	}{
		{"10.9.9.9", Place{"north", ""}, true},
		{"10.1.9.9", Place{"north", "telecom"}, true},
		{"10.1.2.3", Place{"south", "mobile"}, true},
		{"::ffff:10.1.2.3", Place{"south", "mobile"}, true}, // v4-mapped
		{"2001:db8::1", Place{"east", "unicom"}, true},
		{"192.168.1.1", Place{}, false},
		{"2001:db9::1", Place{}, false},
	} {
		got, ok := tab.Lookup(netip.MustParseAddr(c.ip))
		if got != c.want || ok != c.ok {
			t.Errorf("Lookup(%s) = %v %v, want %v %v", c.ip, got, ok, c.want, c.ok)
		}
	}
	a := netip.MustParseAddr("10.1.2.3")
	if n := testing.AllocsPerRun(100, func() { tab.Lookup(a) }); n != 0 {
		t.Errorf("Lookup allocates %v", n)
	}
	for _, bad := range []string{"10.0.0.0/8", "nonsense north", "10.0.0.0/8 no.rth", "10.0.0.0/8 a b c", "10.0.0.0/8 a\n10.0.0.0/8 b"} {
		if _, err := ParseTable(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseTable(%q) accepted", bad)
		}
	}
}

func hosts() []Host {
	return []Host{
		{ID: "n-tel-busy", Addr: "10.0.0.1:7100", Region: "north", Carrier: "telecom", Conns: 15000},
		{ID: "n-tel-idle", Addr: "10.0.0.2:7100", Region: "north", Carrier: "telecom", Conns: 1000},
		{ID: "n-mob", Addr: "10.0.0.3:7100", Region: "north", Carrier: "mobile", Conns: 0},
		{ID: "s-tel", Addr: "10.0.1.1:7100", Region: "south", Carrier: "telecom", Conns: 0},
		{ID: "n-tel-drain", Addr: "10.0.0.4:7100", Region: "north", Carrier: "telecom", Draining: true},
		{ID: "n-tel-evac", Addr: "10.0.0.5:7100", Region: "north", Carrier: "telecom", Evacuating: true},
		{ID: "n-tel-degraded", Addr: "10.0.0.6:7100", Region: "north", Carrier: "telecom", Conns: 1000, Degrade: 3},
		{ID: "s-mob", Addr: "10.0.1.2:7100", Region: "south", Carrier: "mobile", Conns: 100, CPU: 0.9},
	}
}

func ids(cs []Candidate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Host.ID)
	}
	return out
}

func TestSelect(t *testing.T) {
	hs := hosts()
	got := strings.Join(ids(Select(hs, Place{"north", "telecom"}, "", 5, 0)), " ")
	// Same region and carrier by load (the degraded one last of them),
	// then the region, then the others; never draining or evacuating.
	if want := "n-tel-idle n-tel-busy n-tel-degraded n-mob s-tel"; got != want {
		t.Fatalf("north/telecom: %s, want %s", got, want)
	}
	got = strings.Join(ids(Select(hs, Place{"north", "telecom"}, "n-tel-idle", 3, 0)), " ")
	if want := "n-tel-busy n-tel-degraded n-mob"; got != want {
		t.Fatalf("excluding n-tel-idle: %s, want %s", got, want)
	}
	got = strings.Join(ids(Select(hs, Place{"south", ""}, "", 5, 0)), " ")
	if want := "s-tel s-mob n-mob n-tel-idle n-tel-busy"; got != want {
		t.Fatalf("south: %s, want %s", got, want)
	}
	// Unknown place: least loaded anywhere.
	got = strings.Join(ids(Select(hs, Place{}, "", 2, 0)), " ")
	if want := "n-mob s-tel"; got != want {
		t.Fatalf("unknown: %s, want %s", got, want)
	}
	if w := Weight(&Host{Conns: 20000}, 0); w != 1 {
		t.Errorf("full host weight %d", w)
	}
	if w := Weight(&Host{Conns: 100, MaxConns: 200}, 0); w != 500 {
		t.Errorf("half-full (by its own limit) weight %d", w)
	}
	if w := Weight(&Host{Admission: 1}, 0); w != 500 {
		t.Errorf("admission level 1 weight %d", w)
	}
	if len(Select(nil, Place{}, "", 5, 0)) != 0 {
		t.Error("empty fleet gave nodes")
	}
}

func TestSelectRandomFollowsWeights(t *testing.T) {
	hs := []Host{
		{ID: "a", Addr: "a:1", Region: "r", Conns: 0},     // weight 1000
		{ID: "b", Addr: "b:1", Region: "r", Conns: 15000}, // weight 250
		{ID: "c", Addr: "c:1", Region: "x", Conns: 0},     // another region: always after
	}
	rng := rand.New(rand.NewPCG(1, 2))
	first := map[string]int{}
	for range 10000 {
		cs := SelectRandom(hs, Place{"r", ""}, "", 3, 0, rng)
		if cs[2].Host.ID != "c" {
			t.Fatalf("the far host came before a near one: %v", ids(cs))
		}
		first[cs[0].Host.ID]++
	}
	// P(a first) = 1000/1250 = 0.8.
	if a := first["a"]; a < 7700 || a > 8300 {
		t.Fatalf("a first %d of 10000, want about 8000", a)
	}
}

func TestListsCacheAndVariants(t *testing.T) {
	v := NewView(time.Minute)
	now := time.Now()
	for _, h := range hosts() {
		v.Apply(Announcement{Host: h.ID, Worker: h.ID + "/w0", Addr: h.Addr, Region: h.Region, Carrier: h.Carrier,
			Conns: h.Conns, Draining: h.Draining, Evacuating: h.Evacuating, Degrade: h.Degrade, CPU: h.CPU}, now)
	}
	r := testRing(t)
	l := NewLists(ListConfig{Self: "n-tel-idle", Variants: 4}, v, r)
	p := Place{"north", "telecom"}
	raw := l.Signed(p, false, 0)
	var sl pb.SignedNodeList
	if err := proto.Unmarshal(raw, &sl); err != nil {
		t.Fatal(err)
	}
	nl, err := Verify(&sl, r.Pins())
	if err != nil {
		t.Fatal(err)
	}
	if len(nl.Nodes) != 5 || nl.Nodes[0].Host != "n-tel-idle" || nl.Region != "north" || nl.Carrier != "telecom" ||
		nl.Race != 2 || nl.RaceStaggerMs != 250 || nl.TtlS != 300 || nl.BackoffMinMs != 1000 || nl.BackoffMaxMs != 300000 {
		t.Fatalf("variant 0: %v", nl)
	}
	for pick := range uint64(8) {
		sl := l.SignedList(p, true, pick)
		nl, err := Verify(sl, r.Pins())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nl.Nodes {
			if n.Host == "n-tel-idle" {
				t.Fatalf("redirect list names this host: %v", nl)
			}
		}
	}
	// Cached: the same bytes, without allocating, until a refresh.
	if &l.Signed(p, false, 0)[0] != &raw[0] {
		t.Fatal("list rebuilt on every call")
	}
	if n := testing.AllocsPerRun(100, func() { l.Signed(p, false, 3) }); n != 0 {
		t.Fatalf("Signed allocates %v", n)
	}
	// A host that starts draining is gone from the next refresh's lists.
	v.Apply(Announcement{Host: "n-tel-idle", Worker: "n-tel-idle/w0", Addr: "10.0.0.2:7100", Region: "north", Carrier: "telecom", Draining: true}, now)
	l.now = func() time.Time { return now.Add(2 * time.Second) }
	l.Refresh(false)
	nl, _ = Verify(l.SignedList(p, false, 0), r.Pins())
	if nl.Nodes[0].Host != "n-tel-busy" {
		t.Fatalf("after n-tel-idle drains: %v", nl.Nodes)
	}
	// New keys: re-signed at once.
	r2, _ := r.Rotate()
	l.SetKeys(r2)
	if sl := l.SignedList(p, false, 0); sl.KeyId != 2 {
		t.Fatalf("after rotation signed by %d", sl.KeyId)
	}
	// No usable host: no list.
	empty := NewLists(ListConfig{}, NewView(time.Minute), r)
	if empty.Signed(p, false, 0) != nil {
		t.Fatal("a list without nodes")
	}
}

func TestViewExpiry(t *testing.T) {
	v := NewView(3 * time.Second)
	var left []string
	v.OnLeave(func(h Host) { left = append(left, h.ID) })
	t0 := time.Now()
	v.Apply(Announcement{Host: "a", Worker: "a/w0", Addr: "a:1", Conns: 10, MaxConns: 100}, t0)
	v.Apply(Announcement{Host: "a", Worker: "a/w1", Addr: "a:1", Conns: 5, MaxConns: 100, Admission: 2}, t0.Add(2*time.Second))
	v.Apply(Announcement{Host: "b", Worker: "b/w0", Addr: "b:1"}, t0)
	h, _ := v.Host("a")
	if h.Conns != 15 || h.MaxConns != 200 || h.Admission != 2 || len(h.Workers) != 2 {
		t.Fatalf("merged host: %+v", h)
	}
	v.Expire(t0.Add(4 * time.Second)) // a/w0 and b silent for 4s
	if h, _ := v.Host("a"); h.Conns != 5 || len(h.Workers) != 1 {
		t.Fatalf("after a/w0 expired: %+v", h)
	}
	if strings.Join(left, ",") != "b" {
		t.Fatalf("left %v, want b (a still has a worker)", left)
	}
	v.Apply(Announcement{Host: "a", Worker: "a/w1", Goodbye: true}, t0.Add(4*time.Second))
	if len(v.Hosts()) != 0 || strings.Join(left, ",") != "b,a" {
		t.Fatalf("after goodbye: %v, left %v", v.Hosts(), left)
	}
}
