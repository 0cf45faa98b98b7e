package gateway

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestFleetEvacPacerWindow drives the evacuation pacer on a simulated
// clock with a 10 ms tick, late wake-ups and stalls, and checks what the
// other hosts see: the reconnects (send + the client's delay) never exceed
// the rate by more than 20% in any 1 s window, the rate is kept, and with
// jitter the arrivals are spread (not a regular comb).
func TestFleetEvacPacerWindow(t *testing.T) {
	for _, rate := range []float64{10, 25, 100, 200, 1000} {
		for _, jitter := range []bool{false, true} {
			r := rand.New(rand.NewPCG(uint64(rate), 7))
			start := time.Unix(1e9, 0)
			now := start
			p := newEvacPacer(rate, jitter, now)
			n := int(rate * 60)
			arr := make([]time.Time, 0, n)
			var afters []time.Duration
			stalled := time.Duration(0)
			for range n {
				for p.wait(now) > 0 {
					now = now.Add(10*time.Millisecond + time.Duration(r.IntN(3000))*time.Microsecond)
				}
				if r.IntN(200) == 0 { // a busy loop: the send is late
					d := time.Duration(r.IntN(1500)) * time.Millisecond
					now = now.Add(d)
					stalled += d
				}
				after := p.take(now)
				if after < 0 || after > time.Second {
					t.Fatalf("rate %g: reconnect delay %v", rate, after)
				}
				afters = append(afters, after)
				arr = append(arr, now.Add(after))
			}
			slices.SortFunc(arr, func(a, b time.Time) int { return a.Compare(b) })
			peak, j := 0, 0
			for i := range arr {
				for arr[i].Sub(arr[j]) >= time.Second {
					j++
				}
				peak = max(peak, i-j+1)
			}
			if limit := 1.2 * rate; float64(peak) > limit {
				t.Errorf("rate %g jitter %v: %d reconnects in a 1 s window, over 1.2x (%g)", rate, jitter, peak, limit)
			}
			took := arr[len(arr)-1].Sub(start) - stalled
			if got := float64(n) / took.Seconds(); got < 0.9*rate {
				t.Errorf("rate %g jitter %v: only %.1f/s outside the stalls", rate, jitter, got)
			}
			if !jitter || rate > 500 {
				continue
			}
			// Spread: the delays cover the slot, and the gaps between
			// arrivals vary (a comb would have a coefficient near 0).
			var sum, sq float64
			for i := 1; i < len(arr); i++ {
				g := arr[i].Sub(arr[i-1]).Seconds()
				sum += g
				sq += g * g
			}
			m := sum / float64(len(arr)-1)
			if cv := math.Sqrt(sq/float64(len(arr)-1)-m*m) / m; cv < 0.3 {
				t.Errorf("rate %g: arrival gaps too regular (cv %.2f)", rate, cv)
			}
			slot := time.Duration(float64(time.Second) / rate)
			if hi := slices.Max(afters); hi < slot*8/10 {
				t.Errorf("rate %g: delays reach only %v of a %v slot", rate, hi, slot)
			}
		}
	}
}
