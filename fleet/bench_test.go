package fleet

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkListsRefresh: re-signing one place's lists (8 variants), what
// each worker does at most once a second per place its clients come from.
func BenchmarkListsRefresh(b *testing.B) {
	v := NewView(time.Minute)
	now := time.Now()
	for i := range 20 {
		v.Apply(Announcement{Host: fmt.Sprintf("h%d", i), Worker: "w", Addr: fmt.Sprintf("10.0.0.%d:7100", i), Region: []string{"north", "south"}[i%2], Carrier: "telecom", Conns: i * 100}, now)
	}
	l := NewLists(ListConfig{}, v, testRingB(b))
	p := Place{"north", "telecom"}
	l.Signed(p, false, 0)
	b.ResetTimer()
	for range b.N {
		l.Refresh(true)
	}
}

// BenchmarkSignedHit: the AUTH path's cached lookup.
func BenchmarkSignedHit(b *testing.B) {
	v := NewView(time.Minute)
	v.Apply(Announcement{Host: "a", Worker: "w", Addr: "10.0.0.1:7100", Region: "north"}, time.Now())
	l := NewLists(ListConfig{}, v, testRingB(b))
	p := Place{"north", "telecom"}
	l.Signed(p, false, 0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		l.Signed(p, false, uint64(i))
	}
}

func testRingB(b *testing.B) *KeyRing {
	k, err := GenerateKey(1)
	if err != nil {
		b.Fatal(err)
	}
	r, _ := NewKeyRing([]SigningKey{k}, 1)
	return r
}
