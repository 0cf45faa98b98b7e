package gateway

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// A call on an idle pool starts at once, not when the loop's batch of
// events is done, and an in-process backend's answer is written by the
// loop before submit returns, without a task (issue 19: calls waited
// ~220 µs for a goroutine at 20k/s on an idle pool). One P, as when both
// Ps run event loops.
func TestCallStartsWhileLoopBusy(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	s, el, bc, c := handoffRig(t, true, "t")
	body := rawRequest([]byte("echo"), []byte("x"))
	inline, quick := 0, 0
	const calls = 40
	for i := 0; i < calls; i++ {
		q0 := s.fwd.stats.queueNs.Load()
		s.fwd.submit(c, uint16(i), body)
		// The rest of the loop's batch: busy, no yield.
		for t0 := time.Now(); time.Since(t0) < 2*time.Millisecond; {
		}
		if bc.writes == i+1 {
			inline++
		} else {
			select { // answered as a task: run it, as the loop would
			case r := <-el.tasks:
				_ = r.Run(context.Background())
			case <-time.After(5 * time.Second):
				t.Fatal("no answer")
			}
		}
		if time.Duration(s.fwd.stats.queueNs.Load()-q0) < time.Millisecond {
			quick++
		}
	}
	// Gosched sometimes runs another goroutine first (the scheduler takes
	// the global queue now and then); then the call goes the old way.
	if inline < calls*3/4 || quick < calls*3/4 {
		t.Fatalf("of %d calls while the loop was busy: %d answered inline, %d started within 1ms", calls, inline, quick)
	}
}
