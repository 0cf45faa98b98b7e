// Package heartbeat owns connection liveness on the server: a hashed timing
// wheel of idle deadlines (this file) and the heartbeat policies the server
// advises clients.
//
// The wheel holds one intrusive Entry per connection (no timer and no
// goroutine per connection, no allocation per operation). Touch, called on
// every inbound frame, is a single atomic store of the current tick; it does
// not move the entry. When an entry's slot comes round, the wheel recomputes
// its deadline from the last touch: if it has passed, the entry expires;
// otherwise it is re-linked into the slot of its new deadline. So a
// connection that keeps talking is visited about once per idle timeout, not
// once per frame, and nothing ever scans all connections.
//
// Concurrency: Touch is goroutine-safe and lock-free. Add, Remove and Set take
// the wheel's mutex. The expire callback runs on the wheel's goroutine,
// outside the mutex, and must not block.
package heartbeat

import (
	"sync"
	"sync/atomic"
	"time"
)

// Never is a timeout or hard deadline that never fires.
const Never = ^uint32(0)

// Entry is a connection's place in the wheel. Embed it in the per-connection
// state; its zero value is ready for Add.
type Entry[T any] struct {
	next, prev *Entry[T] // guarded by Wheel.mu; nil when not linked
	owner      *T        // static after Add
	due        uint32    // tick of the slot this entry sits in; guarded by mu
	timeout    uint32    // idle timeout in ticks, extended by Touch; guarded by mu
	hard       uint32    // absolute tick deadline not extended by Touch; guarded by mu
	last       atomic.Uint32
}

// Owner returns the value the entry was added with.
func (e *Entry[T]) Owner() *T { return e.owner }

// LastTouch returns the tick of the last Touch (or Add). Goroutine-safe.
func (e *Entry[T]) LastTouch() uint32 { return e.last.Load() }

// Wheel is a hashed timing wheel of idle deadlines.
type Wheel[T any] struct {
	tick   time.Duration // static
	mask   uint32        // static
	expire func([]*T)    // static; called with expired owners

	now   atomic.Uint32 // current tick
	start time.Time     // static

	mu    sync.Mutex
	slots []Entry[T] // sentinel heads of circular lists
	size  int        // linked entries, guarded by mu

	batch   []*T // reused by the expiring goroutine only
	stop    chan struct{}
	stopped sync.WaitGroup
	once    sync.Once
}

// NewWheel returns a wheel with the given tick and number of slots (rounded
// up to a power of two). expire receives batches of expired owners; the slice
// is reused, so it must not be retained. Call Start to run it on real time,
// or Advance to drive it by hand (tests).
func NewWheel[T any](tick time.Duration, slots int, expire func([]*T)) *Wheel[T] {
	n := 1
	for n < slots {
		n <<= 1
	}
	w := &Wheel[T]{tick: tick, mask: uint32(n - 1), expire: expire, slots: make([]Entry[T], n), stop: make(chan struct{})}
	for i := range w.slots {
		s := &w.slots[i]
		s.next, s.prev = s, s
	}
	w.now.Store(1) // tick 0 is reserved so a zero `last` reads as "long ago"
	return w
}

// Ticks converts a duration to wheel ticks, rounding up; at least 1.
func (w *Wheel[T]) Ticks(d time.Duration) uint32 {
	if d <= 0 {
		return 1
	}
	t := (d + w.tick - 1) / w.tick
	if t >= time.Duration(Never) {
		return Never - 1
	}
	return uint32(t)
}

// Tick returns the wheel's resolution.
func (w *Wheel[T]) Tick() time.Duration { return w.tick }

// Now returns the current tick. Goroutine-safe.
func (w *Wheel[T]) Now() uint32 { return w.now.Load() }

// Len returns the number of linked entries.
func (w *Wheel[T]) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.size
}

// Touch records activity on e at the current tick: O(1), lock-free, no
// allocation. Goroutine-safe.
func (w *Wheel[T]) Touch(e *Entry[T]) { e.last.Store(w.now.Load()) }

// Add links e for owner with an idle timeout (ticks after the last Touch)
// and a hard deadline (absolute tick, or Never). Adding counts as a touch.
func (w *Wheel[T]) Add(e *Entry[T], owner *T, timeout, hard uint32) {
	e.owner = owner
	now := w.now.Load()
	e.last.Store(now)
	w.mu.Lock()
	if e.next != nil {
		w.unlinkLocked(e)
	}
	e.timeout, e.hard = timeout, hard
	w.linkLocked(e, w.deadline(e, now))
	w.mu.Unlock()
}

// Set changes e's timeout and hard deadline and reschedules it. A no-op if e
// is not linked (already expired or removed).
func (w *Wheel[T]) Set(e *Entry[T], timeout, hard uint32) {
	w.mu.Lock()
	if e.next != nil {
		w.unlinkLocked(e)
		e.timeout, e.hard = timeout, hard
		w.linkLocked(e, w.deadline(e, w.now.Load()))
	}
	w.mu.Unlock()
}

// Remove unlinks e. Safe to call twice or on an entry never added.
func (w *Wheel[T]) Remove(e *Entry[T]) {
	w.mu.Lock()
	if e.next != nil {
		w.unlinkLocked(e)
	}
	w.mu.Unlock()
}

func (w *Wheel[T]) deadline(e *Entry[T], now uint32) uint32 {
	d := Never
	if e.timeout != Never {
		d = e.last.Load() + e.timeout
		if d < e.last.Load() { // overflow
			d = Never
		}
	}
	if e.hard < d {
		d = e.hard
	}
	if d <= now {
		d = now + 1
	}
	return d
}

func (w *Wheel[T]) linkLocked(e *Entry[T], due uint32) {
	if due == Never {
		due = w.now.Load() + w.mask // park one round ahead; re-evaluated then
	}
	e.due = due
	head := &w.slots[due&w.mask]
	e.prev, e.next = head.prev, head
	head.prev.next = e
	head.prev = e
	w.size++
}

func (w *Wheel[T]) unlinkLocked(e *Entry[T]) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.next, e.prev = nil, nil
	w.size--
}

// Advance moves the wheel forward n ticks, expiring what falls due. Start
// calls it from real time; tests call it directly.
func (w *Wheel[T]) Advance(n uint32) {
	for ; n > 0; n-- {
		now := w.now.Add(1)
		w.fire(now)
	}
}

func (w *Wheel[T]) fire(now uint32) {
	w.batch = w.batch[:0]
	w.mu.Lock()
	head := &w.slots[now&w.mask]
	for e := head.next; e != head; {
		next := e.next
		if e.due <= now {
			w.unlinkLocked(e)
			if d := w.deadline(e, now-1); d <= now {
				w.batch = append(w.batch, e.owner) // expired: stays unlinked
			} else {
				w.linkLocked(e, d)
			}
		}
		e = next
	}
	w.mu.Unlock()
	if len(w.batch) > 0 {
		w.expire(w.batch)
		clear(w.batch)
	}
}

// Start runs the wheel on real time in its own goroutine until Stop.
func (w *Wheel[T]) Start() {
	w.start = time.Now()
	w.stopped.Add(1)
	go func() {
		defer w.stopped.Done()
		t := time.NewTicker(w.tick)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				// Catch up on ticks lost to scheduling delays.
				target := uint32(time.Since(w.start)/w.tick) + 1
				if cur := w.now.Load(); target > cur {
					w.Advance(target - cur)
				}
			}
		}
	}()
}

// Stop ends the goroutine started by Start. Safe to call twice.
func (w *Wheel[T]) Stop() {
	w.once.Do(func() { close(w.stop) })
	w.stopped.Wait()
}

// Each calls fn for every linked owner, under the wheel's mutex: fn must be
// quick and must not call back into the wheel. Used by drain to find every
// live connection without a separate registry.
func (w *Wheel[T]) Each(fn func(*T)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.slots {
		head := &w.slots[i]
		for e := head.next; e != head; e = e.next {
			fn(e.owner)
		}
	}
}

// SetTimeout changes e's idle timeout, keeping its hard deadline, and
// reschedules it. A no-op if e is not linked.
func (w *Wheel[T]) SetTimeout(e *Entry[T], timeout uint32) {
	w.mu.Lock()
	if e.next != nil {
		w.unlinkLocked(e)
		e.timeout = timeout
		w.linkLocked(e, w.deadline(e, w.now.Load()))
	}
	w.mu.Unlock()
}
