package admission

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// drive simulates one window: every user in users calls once with each
// business priority; returns who was admitted.
func drive(a *Controller, users int, prios []uint8) map[uint8]map[uint64]bool {
	got := map[uint8]map[uint64]bool{}
	for _, p := range prios {
		got[p] = map[uint64]bool{}
		for u := 1; u <= users; u++ {
			if a.Admit(a.CallLevel(p, uint64(u))) {
				got[p][uint64(u)] = true
			}
		}
	}
	return got
}

func TestAdmissionShedsLowPriorityFirstAndRecovers(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)}
	a := New(Config{QueueTarget: 10 * time.Millisecond, WindowCalls: 1 << 30}, clk.now)
	prios := []uint8{1, 4}
	// Overloaded windows: the threshold falls until priority 4 is shed
	// entirely while priority 1 is still fully served.
	var got map[uint8]map[uint64]bool
	for w := 0; w < 60; w++ {
		got = drive(a, 1000, prios)
		a.Observe(12 * time.Millisecond) // mildly over target: fine-grained steps
		a.roll()
		if len(got[4]) == 0 {
			break
		}
		if len(got[1]) < 1000 {
			t.Fatalf("window %d: priority 1 shed (%d/1000) while priority 4 still admitted (%d)", w, len(got[1]), len(got[4]))
		}
	}
	// The step that sheds the last of priority 4 may also take up to Alpha
	// of the window's admitted calls from the top of priority 1.
	if len(got[4]) != 0 || len(got[1]) < 900 {
		t.Fatalf("after overload: prio1 %d, prio4 %d admitted", len(got[1]), len(got[4]))
	}
	// Keep overloading: now priority 1 is shed by user priority, and the
	// same users stay served from window to window.
	var prev map[uint64]bool
	for w := 0; w < 20; w++ {
		got = drive(a, 1000, prios)
		a.Observe(12 * time.Millisecond)
		a.roll()
		if prev != nil {
			for u := range got[1] {
				if !prev[u] {
					t.Fatalf("user %d admitted now but not in the previous, stricter-or-equal window", u)
				}
			}
		}
		prev = got[1]
	}
	if n := len(got[1]); n == 0 || n >= 1000 {
		t.Fatalf("priority 1 admitted %d/1000: want a partial, user-ordered shed", n)
	}
	// The overload ends but traffic goes on: the queue is short again and
	// the threshold climbs back within a few windows.
	for w := 0; w < 5; w++ {
		drive(a, 1000, prios)
		a.Observe(time.Millisecond)
		a.roll()
	}
	if th, over := a.Level(); th != MaxLevel || over {
		t.Fatalf("not recovered after 5 calm windows: threshold %d overloaded %v", th, over)
	}
	// No traffic at all: admit everything at once.
	a.threshold.Store(100)
	a.roll()
	if th, _ := a.Level(); th != MaxLevel {
		t.Fatalf("idle window kept threshold %d", th)
	}
}

func TestUserPriorityRotatesHourly(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	same, diff := 0, 0
	for u := uint64(1); u <= 1000; u++ {
		if userPriority(u, t0) == userPriority(u, t0.Add(59*time.Minute)) {
			same++
		}
		if userPriority(u, t0) != userPriority(u, t0.Add(time.Hour)) {
			diff++
		}
	}
	if same != 1000 || diff < 900 {
		t.Fatalf("stable within the hour: %d/1000; reshuffled next hour: %d/1000", same, diff)
	}
}

func TestAdmitZeroAlloc(t *testing.T) {
	a := New(Config{}, time.Now)
	if n := testing.AllocsPerRun(1000, func() { a.Admit(a.CallLevel(1, 42)) }); n != 0 {
		t.Fatal(n)
	}
}

// End to end: a backend with a fixed capacity is driven far past it with
// two priorities; low-priority calls absorb the shedding and high-priority
// calls keep succeeding; when the load stops, everything is admitted again.
