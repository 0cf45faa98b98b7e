// Package admission owns overload control for the gateway's forwarding
// pools, after WeChat's DAGOR (SoCC 2018): the Controller detects overload
// by queueing time and sheds calls by business priority, then by a user
// priority that rotates hourly. It needs nothing but the standard library
// and is safe for the event loops, HTTP goroutines and forwarding
// goroutines at once.
package admission

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Admission control on the forwarding pools, after WeChat's DAGOR (SoCC
// 2018): overload is detected by queueing time (how long calls wait for a
// forwarding goroutine), not CPU; under overload calls are shed by business
// priority first and then by user priority, so the same users keep being
// served instead of everyone failing at random.
//
// Every call has a compound level = business<<7 | user (lower is more
// important): business from the method's entry in a configurable table,
// user from a hash of the user id that rotates every hour (so no user is
// always last). A call is admitted if its level is at most the threshold.
// Once per window the controller looks at the average queueing time: over
// the target, it lowers the threshold so about Alpha (scaled up by how far
// over target the queue is, at most a fifth) fewer of the calls seen in the
// window would have been admitted; under it, it raises the threshold
// to admit about Beta more (when the queue is nearly empty, 10% more, then
// 20%, 40%… while it stays so; all of it at once when everything that
// arrives would fit, so recovery is immediate once the load is gone). A histogram of arriving levels per window makes
// that a lookup, not a guess.
//
// Concurrency: admit runs on event loops and HTTP goroutines (atomics only);
// observe runs on forwarding goroutines; the window roll takes a mutex once
// per window.

const (
	userLevels  = 128
	bizLevels   = 64
	levelCount  = bizLevels * userLevels
	MaxLevel    = levelCount - 1 // the threshold that admits everything
	defaultBizP = 4
)

// Config tunes admission control. Zero fields take the defaults.
type Config struct {
	Disabled    bool
	QueueTarget time.Duration  // average queueing time above which the pool counts as overloaded (20ms)
	Window      time.Duration  // how often the threshold moves (1s)
	WindowCalls int            // ...or after this many calls, whichever first (2000)
	Alpha, Beta float64        // shed fraction when overloaded (0.05), readmit fraction when not (0.01)
	Priorities  map[string]int // method → business priority 0 (most important) .. 63; others DefaultPriority
	// DefaultPriority for methods not in Priorities (4).
	DefaultPriority int
	RetryAfter      time.Duration // hint sent with a shed call (500ms, jittered up to 2x)
	// MaxQueueWait: a call that waited longer than this for a goroutine is
	// answered busy instead of run (default 10 × QueueTarget).
	MaxQueueWait time.Duration
}

// DefaultPriorities: login, sync and send above shake and open, above
// everything else.
func DefaultPriorities() map[string]int {
	return map[string]int{
		"login": 1, "sync": 1, "msg.send": 1, "msg.send_group": 1,
		"contact.add": 2, "contact.remove": 2, "profile.get": 2, "profile.set": 2, "group.create": 2,
		"shake": 3, "open": 3,
	}
}

func (c *Config) fill() {
	if c.QueueTarget <= 0 {
		c.QueueTarget = 20 * time.Millisecond
	}
	if c.Window <= 0 {
		c.Window = time.Second
	}
	if c.WindowCalls <= 0 {
		c.WindowCalls = 2000
	}
	if c.Alpha <= 0 {
		c.Alpha = 0.05
	}
	if c.Beta <= 0 {
		c.Beta = 0.01
	}
	if c.Priorities == nil {
		c.Priorities = DefaultPriorities()
	}
	if c.DefaultPriority <= 0 {
		c.DefaultPriority = defaultBizP
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = 500 * time.Millisecond
	}
	if c.MaxQueueWait <= 0 {
		c.MaxQueueWait = 10 * c.QueueTarget
	}
}

type Controller struct {
	cfg Config // static
	now func() time.Time

	threshold atomic.Uint32 // admit levels <= threshold
	arrivals  [levelCount]atomic.Uint32
	queueSum  atomic.Int64 // ns, this window
	queueN    atomic.Int64
	shedTotal atomic.Uint64

	mu          sync.Mutex
	windowStart time.Time
	overloaded  bool // the last window's verdict
	calm        int  // consecutive windows with a nearly empty queue

	// OnLevel, if set before the first call, hears every window's
	// threshold and verdict (the metrics hook).
	OnLevel func(threshold uint32, overloaded bool)
}

// New returns a controller admitting everything until the first
// overloaded window. now is the clock (time.Now outside tests).
func New(cfg Config, now func() time.Time) *Controller {
	cfg.fill()
	a := &Controller{cfg: cfg, now: now, windowStart: now()}
	a.threshold.Store(MaxLevel)
	return a
}

// BizPriority is a method's business priority (0 most important).
func (a *Controller) BizPriority(method string) uint8 {
	p, ok := a.cfg.Priorities[method]
	if !ok {
		p = a.cfg.DefaultPriority
	}
	return uint8(min(max(p, 0), bizLevels-1))
}

// userPriority hashes the user id with the current hour, so each user's
// priority is stable within an hour and reshuffled across hours.
func userPriority(uid uint64, at time.Time) uint32 {
	x := uid ^ uint64(at.Unix()/3600)*0x9E3779B97F4A7C15
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return uint32(x % userLevels)
}

// CallLevel is a call's compound priority level.
func (a *Controller) CallLevel(biz uint8, uid uint64) uint32 {
	return uint32(biz)<<7 | userPriority(uid, a.now())
}

// Admit records the arrival and reports whether the call may enter the
// queue. Lock-free; no allocation.
func (a *Controller) Admit(level uint32) bool {
	if a.cfg.Disabled {
		return true
	}
	a.arrivals[level].Add(1)
	if level > a.threshold.Load() {
		a.shedTotal.Add(1)
		return false
	}
	return true
}

// Observe records one call's queueing time and rolls the window when due.
func (a *Controller) Observe(queued time.Duration) {
	if a.cfg.Disabled {
		return
	}
	a.queueSum.Add(int64(queued))
	n := a.queueN.Add(1)
	if n >= int64(a.cfg.WindowCalls) {
		a.roll()
	}
}

// Tick rolls the window on time (called every few hundred ms).
func (a *Controller) Tick() {
	a.mu.Lock()
	due := a.now().Sub(a.windowStart) >= a.cfg.Window
	a.mu.Unlock()
	if due {
		a.roll()
	}
}

// roll closes the window and moves the threshold.
func (a *Controller) roll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.queueN.Swap(0)
	sum := a.queueSum.Swap(0)
	a.windowStart = a.now()
	var hist [levelCount]uint32
	var admitted uint64
	th := a.threshold.Load()
	for i := range hist {
		hist[i] = a.arrivals[i].Swap(0)
		if uint32(i) <= th {
			admitted += uint64(hist[i])
		}
	}
	over := n > 0 && time.Duration(sum/n) > a.cfg.QueueTarget
	a.overloaded = over
	switch {
	case over:
		a.calm = 0
		// Cut harder the further over target the queue is, so a sudden
		// overload is contained in a few windows, not dozens.
		alpha := min(0.2, a.cfg.Alpha*float64(sum/n)/float64(a.cfg.QueueTarget))
		th = pickThreshold(&hist, uint64(math.Floor(float64(admitted)*(1-alpha))), th, false)
	case th < MaxLevel:
		var total uint64
		for _, h := range hist {
			total += uint64(h)
		}
		beta := a.cfg.Beta
		if n == 0 || time.Duration(sum/n) < a.cfg.QueueTarget/4 {
			// The queue is nearly empty: readmit faster the longer it stays
			// so (10%, 20%, 40%… per window), like a slow start, so recovery
			// takes a few windows without bringing the overload straight back.
			a.calm++
			beta = min(1, 0.1*float64(uint(1)<<min(a.calm-1, 4)))
		} else {
			a.calm = 0
		}
		target := uint64(math.Ceil(float64(admitted)*(1+beta))) + 1
		if target > total {
			th = MaxLevel // everything that arrives fits: stop shedding at once
		} else {
			th = pickThreshold(&hist, target, th, true)
		}
	}
	a.threshold.Store(th)
	if a.OnLevel != nil {
		a.OnLevel(th, over)
	}
}

// pickThreshold returns the level at which the cumulative arrivals reach
// target. When lowering it always moves down at least one level (so a
// persistent overload sheds even with sparse traffic); when raising, at
// least one level up.
func pickThreshold(hist *[levelCount]uint32, target uint64, cur uint32, up bool) uint32 {
	var cum uint64
	lvl := uint32(0)
	found := false
	for i := range hist {
		cum += uint64(hist[i])
		if cum >= target {
			lvl, found = uint32(i), true
			break
		}
	}
	if !found {
		lvl = MaxLevel
	}
	if up {
		return min(max(lvl, cur+1), MaxLevel)
	}
	if lvl >= cur {
		if cur == 0 {
			return 0
		}
		lvl = cur - 1
	}
	return lvl
}

// Level returns the current threshold and whether the last window was
// overloaded. MaxLevel means everything is admitted.
func (a *Controller) Level() (uint32, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.threshold.Load(), a.overloaded
}

// Known reports whether method has an entry in the priority table.
func (a *Controller) Known(method string) bool {
	_, ok := a.cfg.Priorities[method]
	return ok
}

// RetryAfter is the hint sent with a shed call.
func (a *Controller) RetryAfter() time.Duration { return a.cfg.RetryAfter }

// MaxQueueWait is how long a call may wait for a goroutine before it is
// answered busy instead of run.
func (a *Controller) MaxQueueWait() time.Duration { return a.cfg.MaxQueueWait }

// Window is how often the threshold moves.
func (a *Controller) Window() time.Duration { return a.cfg.Window }
