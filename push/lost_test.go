package push

import (
	"slices"
	"testing"
)

// TestLostRoundTrip: lost-push reports survive the wire, many connections
// per message, and a truncated message is refused.
func TestLostRoundTrip(t *testing.T) {
	recs := []lostRec{
		{uid: 1, device: "phone", n: 2, p: [8]LostPush{{1, 10}, {4, 1 << 40}}},
		{uid: 2, device: "", n: 1, p: [8]LostPush{{7, 3}}},
	}
	many := make([]LostPush, MaxLostTypes)
	for i := range many {
		many[i] = LostPush{uint32(i + 1), uint64(i + 100)}
	}
	recs = append(recs, lostRec{uid: 3, device: "pad", n: MaxLostTypes, more: many})
	var b []byte
	for i := range recs {
		b = appendLost(b, &recs[i])
	}
	type got struct {
		uid uint64
		dev string
		p   LostPush
	}
	var out []got
	if !parseLost(b, func(uid uint64, dev string, p LostPush) { out = append(out, got{uid, dev, p}) }) {
		t.Fatal("a well-formed message refused")
	}
	want := []got{{1, "phone", LostPush{1, 10}}, {1, "phone", LostPush{4, 1 << 40}}, {2, "", LostPush{7, 3}}}
	for _, p := range many {
		want = append(want, got{3, "pad", p})
	}
	if !slices.Equal(out, want) {
		t.Fatalf("got %v\nwant %v", out, want)
	}
	for cut := 1; cut < len(b); cut++ { // never a panic, never every record from a truncated message
		n := 0
		if parseLost(b[:len(b)-cut], func(uint64, string, LostPush) { n++ }) && n == len(want) {
			t.Fatalf("cut %d: every record parsed from a truncated message", cut)
		}
	}
}
