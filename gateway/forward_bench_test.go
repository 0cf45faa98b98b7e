package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// chanLoop is an event loop whose Execute hands the task to the goroutine
// playing the loop, as gnet's does (minus the eventfd).
type chanLoop struct {
	gnet.EventLoop
	tasks chan gnet.Runnable
}

func (l chanLoop) Execute(_ context.Context, r gnet.Runnable) error { l.tasks <- r; return nil }

// BenchmarkForwardHandoff: one echo call through the in-process hand-off,
// without the network: submit on the "loop" goroutine, a forwarding
// goroutine runs the embedded echo, the answer goes back to the loop as a
// task (AsyncWrite's path), or straight to the loop that yielded to the
// call (submit's inline path), and is written there. ns/op is the round trip;
// queue-ns/op the time the call waited for a goroutine (the overload
// signal, which must be ~0 on an idle pool). GOMAXPROCS is what the
// benchmark runs with (-cpu).
func BenchmarkForwardHandoff(b *testing.B) {
	for _, yield := range []bool{true, false} {
		for _, batch := range []time.Duration{0, 20 * time.Microsecond} {
			name := "yield"
			if !yield {
				name = "noyield"
			}
			name += "/batch=" + batch.String()
			b.Run(name, func(b *testing.B) { benchHandoff(b, yield, batch) })
		}
	}
}

// benchHandoff: after each submit the loop goroutine stays busy for batch
// (the rest of its batch of events) before it looks for the answer task.
func benchHandoff(b *testing.B, yield bool, batch time.Duration) {
	s, el, bc, c := handoffRig(b, yield, "bench")
	body := rawRequest([]byte("echo"), make([]byte, 64))
	done := make(chan struct{})
	go func() { // the loop
		defer close(done)
		q0, n0 := s.fwd.stats.queueNs.Load(), s.fwd.stats.queueN.Load()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			s.fwd.submit(c, uint16(i), body)
			for t0 := time.Now(); time.Since(t0) < batch; {
			}
			if bc.writes == i { // not answered inline: as a task
				(<-el.tasks).Run(context.Background())
			}
		}
		b.StopTimer()
		if n := s.fwd.stats.queueN.Load() - n0; n > 0 {
			b.ReportMetric(float64(s.fwd.stats.queueNs.Load()-q0)/float64(n), "queue-ns/op")
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatal("hand-off benchmark stuck")
	}
	if bc.writes != b.N {
		b.Fatalf("%d answers written for %d calls", bc.writes, b.N)
	}
}

// handoffRig is a server with its forwarding pool running (stopped at the
// test's end) and one authenticated connection on a fake loop whose tasks
// the caller runs, as gnet's loop would; it returns once the pool's
// goroutines are parked.
func handoffRig(tb testing.TB, yield bool, device string) (*Server, chanLoop, *benchConn, *conn) {
	tb.Helper()
	s, err := New(Config{Keys: testKeys, CallYield: yield})
	if err != nil {
		tb.Fatal(err)
	}
	s.fwd.start()
	tb.Cleanup(s.fwd.stop)
	el := chanLoop{tasks: make(chan gnet.Runnable, 16)}
	bc := &benchConn{el: el}
	c := &conn{gc: bc, uid: 1, device: device}
	c.state.Store(stateAuthed)
	time.Sleep(20 * time.Millisecond) // the pool's goroutines reach their wait
	return s, el, bc, c
}
