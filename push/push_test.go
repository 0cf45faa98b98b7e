package push

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

func TestDeliverRoundTrip(t *testing.T) {
	uids := []uint64{1, 1 << 40, 99}
	b := AppendDeliver(nil, KindNotify, 7, 1<<50, 123, "pad", []byte("hi"), uids)
	d, err := ParseDeliver(b)
	if err != nil {
		t.Fatal(err)
	}
	if d.Kind != KindNotify || d.Type != 7 || d.Version != 1<<50 || d.SentNs != 123 || string(d.Device) != "pad" || string(d.Payload) != "hi" || d.N() != 3 {
		t.Fatalf("%+v", d)
	}
	for i, u := range uids {
		if d.UID(i) != u {
			t.Fatalf("uid %d = %d", i, d.UID(i))
		}
	}
	for n := 0; n < len(b); n++ {
		if _, err := ParseDeliver(b[:n]); err == nil {
			t.Fatalf("truncated at %d accepted", n)
		}
	}
	if _, err := ParseDeliver(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	if _, err := ParseDeliver(AppendDeliver(nil, KindNotify, 1, 1, 0, "", make([]byte, MaxPayload+1), nil)); err == nil {
		t.Fatal("oversized payload accepted")
	}
}

func TestPresenceRoundTrip(t *testing.T) {
	b := AppendPresenceHeader(nil, PresSnapshot, "host/:7100/w3", 77, SnapFirst|SnapLast, 2)
	b = AppendPresenceRec(b, 5, 2)
	b = AppendPresenceRec(b, 6, -1)
	p, err := ParsePresence(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.Kind != PresSnapshot || string(p.Node) != "host/:7100/w3" || p.Incarnation != 77 || p.Flags != 3 || p.N() != 2 {
		t.Fatalf("%+v", p)
	}
	if u, n := p.Rec(1); u != 6 || n != -1 {
		t.Fatalf("rec %d %d", u, n)
	}
	for n := 0; n < len(b); n++ {
		if _, err := ParsePresence(b[:n]); err == nil {
			t.Fatalf("truncated at %d accepted", n)
		}
	}
}

func TestNodeSubject(t *testing.T) {
	if s := NodeSubject("a.b c/*>:1"); s != "longlink.push.node.a_b_c/__:1" {
		t.Fatal(s)
	}
}

// FuzzParseDeliver: router messages come off the network. Whatever is
// accepted re-encodes to the same bytes.
func FuzzParseDeliver(f *testing.F) {
	f.Add(AppendDeliver(nil, KindNotify, 7, 9, 1, "d", []byte("x"), []uint64{1, 2}))
	f.Add(AppendDeliver(nil, KindBroadcast, 1, 2, 3, "", nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDeliver(b)
		if err != nil {
			return
		}
		uids := make([]uint64, d.N())
		for i := range uids {
			uids[i] = d.UID(i)
		}
		if re := AppendDeliver(nil, d.Kind, d.Type, d.Version, d.SentNs, string(d.Device), d.Payload, uids); !bytes.Equal(re, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, re)
		}
	})
}

// FuzzParsePresence: presence messages come off the network too.
func FuzzParsePresence(f *testing.F) {
	f.Add(AppendPresenceRec(AppendPresenceHeader(nil, PresDelta, "n", 1, 0, 1), 5, 1))
	f.Add(AppendPresenceHeader(nil, PresBeacon, "node", 2, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePresence(b)
		if err != nil {
			return
		}
		re := AppendPresenceHeader(nil, p.Kind, string(p.Node), p.Incarnation, p.Flags, p.N())
		for i := 0; i < p.N(); i++ {
			u, n := p.Rec(i)
			re = AppendPresenceRec(re, u, n)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, re)
		}
	})
}

func TestCoalescerKeepsHighestPerUserDeviceType(t *testing.T) {
	c := NewCoalescer()
	c.Add(1, nil, 5, 3, []byte("v3"), 30)
	c.Add(1, nil, 5, 9, []byte("v9"), 90)
	c.Add(1, nil, 5, 4, []byte("v4"), 40) // late and older: ignored
	c.Add(1, []byte("pad"), 5, 2, nil, 20)
	c.Add(1, nil, 6, 1, nil, 10)
	c.Add(2, nil, 5, 1, nil, 10)
	c.AddBroadcast(8, 1, nil, 1)
	c.AddBroadcast(8, 2, nil, 2)
	select {
	case <-c.Ready():
	default:
		t.Fatal("not signalled")
	}
	b := c.Take()
	if b.Len() != 4 || len(b.Broadcast) != 1 || b.Broadcast[0].Version != 2 || b.Broadcast[0].Merged != 1 {
		t.Fatalf("len %d broadcast %+v", b.Len(), b.Broadcast)
	}
	got := map[string]Pending{}
	b.EachUser(nil, func(uid uint64, ents []Pending) {
		for _, e := range ents {
			if e.UID != uid {
				t.Fatalf("entry of %d under %d", e.UID, uid)
			}
			got[fmt.Sprintf("%d/%s/%d", uid, e.Device, e.Type)] = e
		}
	})
	if e := got["1//5"]; e.Version != 9 || string(e.Payload) != "v9" || e.SentNs != 90 || e.Merged != 2 {
		t.Fatalf("%+v", e)
	}
	if e := got["1/pad/5"]; e.Version != 2 {
		t.Fatalf("%+v", e)
	}
	c.Recycle(b)
	if b2 := c.Take(); !b2.Empty() {
		t.Fatal("new window not empty")
	}
}

func TestCoalescerAddDeliver(t *testing.T) {
	c := NewCoalescer()
	c.Add(2, nil, 5, 7, nil, 1) // pending, newer than what follows for uid 2
	msg := AppendDeliver(nil, KindNotify, 5, 4, 40, "pad", []byte("p4"), []uint64{1, 2, 3, 1})
	d, err := ParseDeliver(msg)
	if err != nil {
		t.Fatal(err)
	}
	if merged := c.AddDeliver(&d); merged != 1 { // the second uid 1
		t.Fatalf("merged %d, want 1", merged)
	}
	empty, _ := ParseDeliver(AppendDeliver(nil, KindNotify, 5, 9, 90, "", nil, nil))
	if c.AddDeliver(&empty) != 0 {
		t.Fatal("merged from an empty message")
	}
	b := c.Take()
	got := map[string]Pending{}
	b.EachUser(nil, func(uid uint64, ents []Pending) {
		for _, e := range ents {
			got[fmt.Sprintf("%d/%s/%d", uid, e.Device, e.Type)] = e
		}
	})
	if len(got) != 4 {
		t.Fatalf("%d entries: %+v", len(got), got)
	}
	if e := got["1/pad/5"]; e.Version != 4 || string(e.Payload) != "p4" || e.SentNs != 40 || e.Merged != 1 {
		t.Fatalf("%+v", e)
	}
	if e := got["2//5"]; e.Version != 7 {
		t.Fatalf("device-less entry changed: %+v", e)
	}
	c.Recycle(b)
}

// BenchmarkCoalescerAddDeliver adds router messages of 100 users each.
func BenchmarkCoalescerAddDeliver(b *testing.B) {
	c := NewCoalescer()
	payload := []byte("0123456789abcdef")
	const users = 4096
	msgs := routerMessages(b, users, payload)
	for range 2 { // grow both batches' tables once
		for m := range msgs {
			c.AddDeliver(&msgs[m])
		}
		c.Recycle(c.Take())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := i % len(msgs)
		c.AddDeliver(&msgs[m])
		if m == len(msgs)-1 {
			c.Recycle(c.Take())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*usersPerMessage), "ns/user")
}

// usersPerMessage is how many users each of routerMessages' messages names.
const usersPerMessage = 100

// routerMessages are router messages (notifies of payload) to users 0 to
// users-1, usersPerMessage a message, types 0 to 3 in turn.
func routerMessages(tb testing.TB, users int, payload []byte) []Deliver {
	tb.Helper()
	uids := make([]uint64, usersPerMessage)
	msgs := make([]Deliver, users/len(uids))
	for m := range msgs {
		for i := range uids {
			uids[i] = uint64(m*len(uids) + i)
		}
		d, err := ParseDeliver(AppendDeliver(nil, KindNotify, uint32(m&3), 1, 1, "", payload, uids))
		if err != nil {
			tb.Fatal(err)
		}
		msgs[m] = d
	}
	return msgs
}

func BenchmarkCoalescerAdd(b *testing.B) {
	c := NewCoalescer()
	payload := []byte("0123456789abcdef")
	const users = 4096
	for i := 0; i < users; i++ { // grow the tables once
		c.Add(uint64(i), nil, uint32(i&3), 1, payload, 1)
	}
	c.Recycle(c.Take())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Add(uint64(i%users), nil, uint32(i&3), uint64(i), payload, 1)
		if i%users == users-1 {
			c.Recycle(c.Take())
		}
	}
}

func TestRegistryCountsAndNodes(t *testing.T) {
	r := NewRegistry()
	r.Add(1, 0, 1)
	r.Add(1, 0, 1)
	r.Add(1, 3, 1)
	r.Add(1, 4, 1) // third node: overflow
	if got := r.Lookup(1, nil); len(got) != 3 {
		t.Fatalf("nodes %v", got)
	}
	r.Add(1, 0, -1)
	if got := r.Lookup(1, nil); len(got) != 3 {
		t.Fatalf("one of two connections left on node 0: %v", got)
	}
	r.Add(1, 0, -1)
	if got := r.Lookup(1, nil); len(got) != 2 {
		t.Fatalf("nodes %v", got)
	}
	r.DropNode(3)
	if got := r.Lookup(1, nil); len(got) != 1 || got[0] != 4 {
		t.Fatalf("nodes %v", got)
	}
	r.Set(1, 4, 0)
	if r.Users() != 0 || len(r.Lookup(1, nil)) != 0 {
		t.Fatal("user left behind")
	}
	r.Add(2, 1, -1) // an offline without online never goes negative
	if r.Users() != 0 {
		t.Fatal("negative count stored")
	}
}

// TestRegistryMillionUsers measures the registry at 1M users: memory, and
// the time of an insert, a lookup and a node drop.
func TestRegistryMillionUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("1M users")
	}
	const users = 1_000_000
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	r := NewRegistry()
	start := time.Now()
	for i := uint64(0); i < users; i++ {
		r.Add(i*7919, uint16(i%60), 1)
	}
	ins := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	start = time.Now()
	var dst [4]uint16
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < users; i++ {
		if len(r.Lookup(rng.Uint64N(users)*7919, dst[:0])) != 1 {
			t.Fatal("lookup missed")
		}
	}
	look := time.Since(start)
	start = time.Now()
	r.DropNode(5)
	drop := time.Since(start)
	if want := users - (users-5+59)/60; r.Users() != want {
		t.Fatalf("users %d", r.Users())
	}
	t.Logf("registry at 1M users: %.1f bytes/user heap, insert %v/user, lookup %v/user, drop one node (of 60) %v",
		float64(m1.HeapAlloc-m0.HeapAlloc)/users, ins/users, look/users, drop)
}

func BenchmarkRegistryLookup(b *testing.B) {
	r := NewRegistry()
	for i := uint64(0); i < 1<<20; i++ {
		r.Add(i, uint16(i%60), 1)
	}
	var dst [4]uint16
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.Lookup(uint64(i)&(1<<20-1), dst[:0])
	}
}
