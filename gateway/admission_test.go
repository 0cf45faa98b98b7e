package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// drive simulates one window: every user in users calls once with each
// business priority; returns who was admitted.
func drive(a *admission, users int, prios []uint8) map[uint8]map[uint64]bool {
	got := map[uint8]map[uint64]bool{}
	for _, p := range prios {
		got[p] = map[uint64]bool{}
		for u := 1; u <= users; u++ {
			if a.admit(a.level(p, uint64(u))) {
				got[p][uint64(u)] = true
			}
		}
	}
	return got
}

func TestAdmissionShedsLowPriorityFirstAndRecovers(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)}
	a := newAdmission(AdmissionConfig{QueueTarget: 10 * time.Millisecond, WindowCalls: 1 << 30}, clk.now)
	prios := []uint8{1, 4}
	// Overloaded windows: the threshold falls until priority 4 is shed
	// entirely while priority 1 is still fully served.
	var got map[uint8]map[uint64]bool
	for w := 0; w < 60; w++ {
		got = drive(a, 1000, prios)
		a.observe(12 * time.Millisecond) // mildly over target: fine-grained steps
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
		a.observe(12 * time.Millisecond)
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
		a.observe(time.Millisecond)
		a.roll()
	}
	if th, over := a.Level(); th != maxLevel || over {
		t.Fatalf("not recovered after 5 calm windows: threshold %d overloaded %v", th, over)
	}
	// No traffic at all: admit everything at once.
	a.threshold.Store(100)
	a.roll()
	if th, _ := a.Level(); th != maxLevel {
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
	a := newAdmission(AdmissionConfig{}, time.Now)
	if n := testing.AllocsPerRun(1000, func() { a.admit(a.level(1, 42)) }); n != 0 {
		t.Fatal(n)
	}
}

// End to end: a backend with a fixed capacity is driven far past it with
// two priorities; low-priority calls absorb the shedding and high-priority
// calls keep succeeding; when the load stops, everything is admitted again.
func TestOverloadShedsByPriority(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	be := backend.NewEmbedded()
	slow := func(ctx context.Context, _ *backend.Request) ([]byte, error) {
		select {
		case <-time.After(2 * time.Millisecond):
		case <-ctx.Done():
		}
		return []byte("ok"), nil
	}
	be.Handle("msg.send", slow) // priority 1
	be.Handle("feed.get", slow) // default priority 4
	s := startServer(t, func(c *Config) {
		c.Backend = be
		c.PoolSize = 4 // ~2000 calls/s of capacity
		c.MaxFrameRate = 100000
		c.MaxInflight = 64
		c.Admission = AdmissionConfig{QueueTarget: 5 * time.Millisecond, Window: 200 * time.Millisecond, WindowCalls: 400}
	})
	var okHigh, busyHigh, okLow, busyLow atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := dialWire(t, s.Addr())
			w.auth(token(t, uint64(i+1), "", time.Hour), "d")
			method, ok, busy := "feed.get", &okLow, &busyLow
			if i%4 == 0 {
				method, ok, busy = "msg.send", &okHigh, &busyHigh
			}
			for seq := uint16(1); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				r := w.call(seq, method, nil)
				switch codec.Code(r.Code) {
				case codec.OK:
					ok.Add(1)
				case codec.CodeBusy:
					busy.Add(1)
				}
			}
		}(i)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("high: %d ok %d busy; low: %d ok %d busy", okHigh.Load(), busyHigh.Load(), okLow.Load(), busyLow.Load())
	if busyLow.Load() == 0 {
		t.Fatal("no shedding under overload")
	}
	highShare := float64(busyHigh.Load()) / float64(okHigh.Load()+busyHigh.Load()+1)
	lowShare := float64(busyLow.Load()) / float64(okLow.Load()+busyLow.Load()+1)
	if highShare >= lowShare {
		t.Fatalf("high priority shed %.0f%%, low %.0f%%: low priority must absorb the shedding", highShare*100, lowShare*100)
	}
	checkFor(t, 3*time.Second, func() error {
		if th, _ := s.fwd.adm.Level(); th != maxLevel {
			return errorf("threshold still %d after the load stopped", th)
		}
		return nil
	})
}

// Admitted high-priority calls don't wait behind queued low-priority ones,
// and a full queue answers busy without harm.
func TestPriorityLanes(t *testing.T) {
	release := make(chan struct{})
	be := backend.NewEmbedded()
	be.Handle("block", func(ctx context.Context, _ *backend.Request) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	})
	var order []string
	var mu sync.Mutex
	rec := func(name string) backend.Handler {
		return func(context.Context, *backend.Request) ([]byte, error) {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			return nil, nil
		}
	}
	be.Handle("feed.get", rec("low"))  // default priority 4
	be.Handle("msg.send", rec("high")) // priority 1
	s := startServer(t, func(c *Config) { c.Backend = be; c.PoolSize = 1; c.QueueSize = 4 })
	w := dialWire(t, s.Addr())
	w.auth(token(t, 1, "", time.Hour), "d")
	var b []byte
	req := func(seq uint16, m string) {
		body, _ := proto.Marshal(&pb.Request{Method: m})
		b = codec.AppendFrame(b, codec.CmdRequest, 0, seq, body)
	}
	req(1, "block")
	for i := uint16(2); i <= 7; i++ { // 4 fit in the low lane, 2 are refused
		req(i, "feed.get")
	}
	req(8, "msg.send")
	w.send(b)
	busy := 0
	for busy < 2 {
		f := w.expect(codec.CmdResponse, 2*time.Second)
		var r pb.Response
		_ = proto.Unmarshal(f.Body, &r)
		if codec.Code(r.Code) != codec.CodeBusy {
			t.Fatalf("before release: %d %v", f.Seq, &r)
		}
		busy++
	}
	time.Sleep(50 * time.Millisecond) // let the loop queue everything
	close(release)
	for i := 0; i < 6; i++ {
		w.expect(codec.CmdResponse, 2*time.Second)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 5 || order[0] != "high" {
		t.Fatalf("run order %v: the high-priority call must run first", order)
	}
}
