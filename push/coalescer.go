package push

import "sync"

// Pending is one coalesced notify: the highest version seen in the window for
// a (user, device, type), with that version's payload.
type Pending struct {
	UID     uint64
	Device  string // "" = every device
	Type    uint32
	Version uint64
	Payload []byte // aliases the message it came in; never modified
	SentNs  int64  // router arrival time of the notify that set Version
	Merged  uint32 // notifies folded into this one (0 = none)
	next    int32
}

// Batch is what one coalescing window collected, grouped by user so a
// connection receives everything for it in one write.
type Batch struct {
	users     map[uint64]int32 // uid → head index in ents
	ents      []Pending
	Broadcast []Pending // one per type, highest version
}

func newBatch() *Batch { return &Batch{users: make(map[uint64]int32)} }

// Len is the number of pending (user, device, type) entries, broadcasts aside.
func (b *Batch) Len() int { return len(b.ents) }

// Empty reports whether the batch holds nothing.
func (b *Batch) Empty() bool { return len(b.ents) == 0 && len(b.Broadcast) == 0 }

// EachUser calls fn once per user with that user's entries (a slice reused
// between calls: copy what you keep).
func (b *Batch) EachUser(scratch []Pending, fn func(uid uint64, ents []Pending)) []Pending {
	for uid, i := range b.users {
		scratch = scratch[:0]
		for ; i >= 0; i = b.ents[i].next {
			scratch = append(scratch, b.ents[i])
		}
		fn(uid, scratch)
	}
	return scratch
}

func (b *Batch) reset() {
	clear(b.users)
	clear(b.ents) // drop payload references
	b.ents = b.ents[:0]
	clear(b.Broadcast)
	b.Broadcast = b.Broadcast[:0]
}

func (b *Batch) add(uid uint64, device []byte, typ uint32, version uint64, payload []byte, sentNs int64) (merged bool) {
	head, ok := b.users[uid]
	if !ok {
		head = -1
	}
	for i := head; i >= 0; i = b.ents[i].next {
		e := &b.ents[i]
		if e.Type == typ && e.Device == string(device) {
			e.Merged++
			if version > e.Version {
				e.Version, e.Payload, e.SentNs = version, payload, sentNs
			}
			return true
		}
	}
	b.ents = append(b.ents, Pending{UID: uid, Device: string(device), Type: typ, Version: version, Payload: payload, SentNs: sentNs, next: head})
	b.users[uid] = int32(len(b.ents) - 1)
	return false
}

func (b *Batch) addBroadcast(typ uint32, version uint64, payload []byte, sentNs int64) bool {
	for i := range b.Broadcast {
		e := &b.Broadcast[i]
		if e.Type == typ {
			e.Merged++
			if version > e.Version {
				e.Version, e.Payload, e.SentNs = version, payload, sentNs
			}
			return true
		}
	}
	b.Broadcast = append(b.Broadcast, Pending{Type: typ, Version: version, Payload: payload, SentNs: sentNs})
	return false
}

// Coalescer merges notifies for the same (user, device, type) that arrive
// within one window into a single entry carrying the highest version.
//
// Concurrency: Add and AddBroadcast may be called from any goroutine; Take
// and Recycle by the one flushing goroutine. Ready is signalled when the
// first entry of a window arrives, so an idle coalescer costs nothing.
type Coalescer struct {
	mu    sync.Mutex
	cur   *Batch
	spare *Batch
	ready chan struct{}
}

// NewCoalescer returns an empty coalescer.
func NewCoalescer() *Coalescer {
	return &Coalescer{cur: newBatch(), spare: newBatch(), ready: make(chan struct{}, 1)}
}

// Ready is signalled when the current window receives its first entry.
func (c *Coalescer) Ready() <-chan struct{} { return c.ready }

// Add records a notify. device "" means every device. It reports whether the
// notify was merged into one already pending. Allocation-free for device ""
// once the window's tables have grown.
func (c *Coalescer) Add(uid uint64, device []byte, typ uint32, version uint64, payload []byte, sentNs int64) bool {
	c.mu.Lock()
	first := c.cur.Empty()
	merged := c.cur.add(uid, device, typ, version, payload, sentNs)
	c.mu.Unlock()
	if first {
		c.signal()
	}
	return merged
}

// AddDeliver records a KindNotify message's notify for each of its users
// under one lock, and reports how many were merged into entries already
// pending. Allocation-free like Add.
func (c *Coalescer) AddDeliver(d *Deliver) (merged int) {
	n := d.N()
	if n == 0 {
		return 0
	}
	c.mu.Lock()
	first := c.cur.Empty()
	for i := 0; i < n; i++ {
		if c.cur.add(d.UID(i), d.Device, d.Type, d.Version, d.Payload, d.SentNs) {
			merged++
		}
	}
	c.mu.Unlock()
	if first {
		c.signal()
	}
	return merged
}

// AddBroadcast records a notify for everyone connected.
func (c *Coalescer) AddBroadcast(typ uint32, version uint64, payload []byte, sentNs int64) bool {
	c.mu.Lock()
	first := c.cur.Empty()
	merged := c.cur.addBroadcast(typ, version, payload, sentNs)
	c.mu.Unlock()
	if first {
		c.signal()
	}
	return merged
}

func (c *Coalescer) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Take ends the window: it returns what was collected and starts a new one.
// Give the batch back with Recycle once done with it.
func (c *Coalescer) Take() *Batch {
	c.mu.Lock()
	b := c.cur
	if c.spare != nil {
		c.cur, c.spare = c.spare, nil
	} else {
		c.cur = newBatch()
	}
	c.mu.Unlock()
	return b
}

// Recycle returns a batch taken with Take for reuse.
func (c *Coalescer) Recycle(b *Batch) {
	b.reset()
	c.mu.Lock()
	if c.spare == nil {
		c.spare = b
	}
	c.mu.Unlock()
}
