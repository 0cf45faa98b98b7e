package heartbeat

import (
	"runtime"
	"testing"
	"time"
)

type item struct {
	e  Entry[item]
	id int
}

func newTestWheel(slots int) (*Wheel[item], *[]int) {
	var expired []int
	w := NewWheel(time.Second, slots, func(b []*item) {
		for _, it := range b {
			expired = append(expired, it.id)
		}
	})
	return w, &expired
}

func TestIdleExpiryAndTouch(t *testing.T) {
	w, expired := newTestWheel(16)
	a, b := &item{id: 1}, &item{id: 2}
	w.Add(&a.e, a, 5, Never)
	w.Add(&b.e, b, 5, Never)
	for i := 0; i < 20; i++ { // b is touched every tick; a never
		w.Advance(1)
		w.Touch(&b.e)
		if i == 3 && len(*expired) != 0 {
			t.Fatalf("expired early: %v", *expired)
		}
	}
	if len(*expired) != 1 || (*expired)[0] != 1 {
		t.Fatalf("expired = %v, want [1]", *expired)
	}
	if w.Len() != 1 {
		t.Fatalf("len = %d", w.Len())
	}
}

func TestExpiresAtDeadlineNotBefore(t *testing.T) {
	w, expired := newTestWheel(8) // timeout longer than the wheel: needs rounds
	a := &item{id: 1}
	w.Add(&a.e, a, 30, Never)
	w.Advance(29)
	if len(*expired) != 0 {
		t.Fatalf("expired after 29 of 30 ticks")
	}
	w.Advance(1)
	if len(*expired) != 1 {
		t.Fatalf("not expired at 30 ticks")
	}
}

func TestHardDeadlineIgnoresTouch(t *testing.T) {
	w, expired := newTestWheel(64)
	a := &item{id: 1}
	w.Add(&a.e, a, Never, w.Now()+3)
	for i := 0; i < 3; i++ {
		w.Touch(&a.e)
		w.Advance(1)
	}
	if len(*expired) != 1 {
		t.Fatalf("hard deadline missed: %v", *expired)
	}
}

func TestSetAndRemove(t *testing.T) {
	w, expired := newTestWheel(64)
	a, b := &item{id: 1}, &item{id: 2}
	w.Add(&a.e, a, 100, Never)
	w.Add(&b.e, b, 100, Never)
	w.Set(&a.e, 2, Never) // shorten: must fire at the new deadline
	w.Remove(&b.e)
	w.Remove(&b.e) // twice is fine
	w.Advance(3)
	if len(*expired) != 1 || (*expired)[0] != 1 {
		t.Fatalf("expired = %v", *expired)
	}
	w.Set(&a.e, 1, Never) // no-op once expired
	if w.Len() != 0 {
		t.Fatalf("len = %d", w.Len())
	}
}

func TestRealTime(t *testing.T) {
	done := make(chan int, 1)
	w := NewWheel(5*time.Millisecond, 64, func(b []*item) { done <- b[0].id })
	w.Start()
	defer w.Stop()
	a := &item{id: 7}
	w.Add(&a.e, a, w.Ticks(30*time.Millisecond), Never)
	select {
	case id := <-done:
		if id != 7 {
			t.Fatal(id)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no expiry on real time")
	}
}

func TestTouchZeroAlloc(t *testing.T) {
	w, _ := newTestWheel(64)
	a := &item{}
	w.Add(&a.e, a, 10, Never)
	if n := testing.AllocsPerRun(1000, func() { w.Touch(&a.e) }); n != 0 {
		t.Fatalf("Touch allocates %v", n)
	}
}

func BenchmarkTouch(b *testing.B) {
	w, _ := newTestWheel(4096)
	a := &item{}
	w.Add(&a.e, a, 300, Never)
	b.ReportAllocs()
	for b.Loop() {
		w.Touch(&a.e)
	}
}

// BenchmarkMemoryPerEntry reports bytes per tracked connection at 1M
// entries: the Entry embedded in the connection plus the wheel's share.
func BenchmarkMemoryPerEntry(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		w, _ := newTestWheel(4096)
		entries := make([]Entry[item], n)
		for i := range entries {
			w.Add(&entries[i], nil, uint32(60+i%600), Never)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/n, "B/entry")
		runtime.KeepAlive(entries)
		runtime.KeepAlive(w)
	}
}

// BenchmarkExpireBatch: cost per connection of expiring 100k at once.
func BenchmarkExpireBatch(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		b.StopTimer()
		count := 0
		w := NewWheel(time.Second, 4096, func(bt []*item) { count += len(bt) })
		items := make([]item, n)
		for i := range items {
			w.Add(&items[i].e, &items[i], 10, Never)
		}
		b.StartTimer()
		w.Advance(10)
		if count != n {
			b.Fatalf("expired %d of %d", count, n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/expired")
}

// BenchmarkRevisit: cost per connection of the once-per-timeout revisit of
// live (recently touched) connections, which replaces per-frame relinking.
func BenchmarkRevisit(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		b.StopTimer()
		w := NewWheel(time.Second, 4096, func([]*item) {})
		items := make([]item, n)
		for i := range items {
			w.Add(&items[i].e, &items[i], 10, Never)
		}
		w.Advance(9)
		for i := range items {
			w.Touch(&items[i].e)
		}
		b.StartTimer()
		w.Advance(1)
		if w.Len() != n {
			b.Fatal("lost entries")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/revisit")
}
