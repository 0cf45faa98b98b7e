package gateway

import (
	"math/rand/v2"
	"time"
)

// evacPacer schedules an evacuation's GOAWAYs: one per slot of 1/rate,
// sent at the slot's start. With jitter each client's reconnect delay is
// a random point inside its own slot (capped at 1 s), so arrivals at the
// other hosts are spread, never regular, yet stay one per slot: in any
// 1 s window they exceed the rate by at most rate×burst plus two (the
// slots cut at the window's edges). Independent random gaps (Poisson)
// bunch by chance: 34–47 a second were seen at 25/s.
type evacPacer struct {
	slot   time.Duration
	jitter bool
	next   time.Time // earliest start of the next slot
}

// evacBurst is how far a late send may catch up on the schedule (a busy
// loop, a late timer); a longer stall is dropped, not made up in a burst.
const evacBurst = 20 * time.Millisecond

func newEvacPacer(rate float64, jitter bool, now time.Time) *evacPacer {
	return &evacPacer{slot: time.Duration(float64(time.Second) / rate), jitter: jitter, next: now}
}

// wait is how long until the next GOAWAY may go (≤ 0: now).
func (p *evacPacer) wait(now time.Time) time.Duration { return p.next.Sub(now) }

// take books the slot of a GOAWAY sent at now and returns the client's
// reconnect delay.
func (p *evacPacer) take(now time.Time) (after time.Duration) {
	if early := now.Add(-evacBurst); p.next.Before(early) {
		p.next = early
	}
	p.next = p.next.Add(p.slot)
	if !p.jitter {
		return 0
	}
	span := min(p.slot, time.Second)
	if span <= time.Millisecond {
		return 0 // the hint's unit: slots this short are spread by the sends
	}
	return time.Duration(rand.Int64N(int64(span/time.Millisecond))) * time.Millisecond
}
