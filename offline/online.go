package offline

import (
	"slices"
	"sync"
	"time"
)

// Online is a short negative cache of users all of whose registered
// devices were connected when the sender last asked: while an entry holds,
// the enqueuer does not queue their notifies (no JetStream write, no device
// query later), which is the common case of an active user. An entry ends
// at the first of: one of the user's connections closes (the router's
// presence delta, Left), the router's registry loses track of a node
// (Reset), the user's registrations change (their revisions are part of the
// entry), or TTL.
//
// Same deliveries as without it: a notify skipped at time t is kept (the
// newest per type and device) for Hold; if the entry ends by Left or Reset
// within Hold, it is queued then, with its original time, so the sender
// judges it at t + delay exactly as it would have (Hold is the delay plus a
// second, for the presence delta's trip to the router). A device
// query racing a close cannot fill a stale entry: Fill is refused when a
// Left hit the user's shard since Begin.
//
// Only a sender in the same process as the enqueuer fills it (`--offline
// embedded`); with separate `longlink offline` senders it stays empty.
// Goroutine-safe.
type Online struct {
	ttl, hold time.Duration
	now       func() int64
	shards    [64]onShard
}

type onShard struct {
	mu  sync.Mutex
	gen uint64 // Lefts and Resets seen by this shard
	m   map[uint64]*onEntry
}

type onEntry struct {
	until int64  // unix ns
	fp    uint64 // the registrations' fingerprint (Devices.covered)
	skip  []Job  // newest per (type, device), for a replay
}

// NewOnline returns a cache whose entries live ttl (default 30s) and keep
// skipped notifies hold (default 4s: the default 3 s delay plus a second).
func NewOnline(ttl, hold time.Duration) *Online {
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	if hold <= 0 {
		hold = 4 * time.Second
	}
	o := &Online{ttl: ttl, hold: hold, now: func() int64 { return time.Now().UnixNano() }}
	for i := range o.shards {
		o.shards[i].m = map[uint64]*onEntry{}
	}
	return o
}

func (o *Online) shard(uid uint64) *onShard { return &o.shards[uid%uint64(len(o.shards))] }

// Begin is called before a device query for uid; its result goes to Fill.
func (o *Online) Begin(uid uint64) uint64 {
	if o == nil {
		return 0
	}
	sh := o.shard(uid)
	sh.mu.Lock()
	g := sh.gen
	sh.mu.Unlock()
	return g
}

// Fill records that every registered device of uid (fingerprint fp) was
// connected, unless a Left or Reset reached uid's shard since Begin.
func (o *Online) Fill(uid, begin, fp uint64) {
	if o == nil {
		return
	}
	sh := o.shard(uid)
	sh.mu.Lock()
	if sh.gen == begin {
		e := sh.m[uid]
		if e == nil {
			e = &onEntry{}
			sh.m[uid] = e
		}
		e.until, e.fp = o.now()+int64(o.ttl), fp
	}
	sh.mu.Unlock()
}

// skip reports whether j (a notify for an online user whose registrations
// have fingerprint fp) need not be queued, and keeps it for a replay if so.
func (o *Online) skip(j *Job, fp uint64) bool {
	sh := o.shard(j.UID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[j.UID]
	if e == nil {
		return false
	}
	if j.At > e.until || e.fp != fp {
		delete(sh.m, j.UID) // expired, or registrations changed: ask again
		return false
	}
	cut := j.At - int64(o.hold)
	e.skip = slices.DeleteFunc(e.skip, func(s Job) bool {
		return s.At < cut || (s.Type == j.Type && s.Device == j.Device)
	})
	if len(e.skip) >= 64 { // a storm of many types: keep it bounded, queue it instead
		delete(sh.m, j.UID)
		return false
	}
	e.skip = append(e.skip, *j)
	return true
}

// left ends uid's entry and returns what it skipped within Hold.
func (o *Online) left(uid uint64) []Job {
	sh := o.shard(uid)
	sh.mu.Lock()
	sh.gen++
	e := sh.m[uid]
	delete(sh.m, uid)
	sh.mu.Unlock()
	if e == nil {
		return nil
	}
	cut := o.now() - int64(o.hold)
	return slices.DeleteFunc(e.skip, func(s Job) bool { return s.At < cut })
}

// reset ends every entry and returns what they skipped within Hold.
func (o *Online) reset() []Job {
	var out []Job
	cut := o.now() - int64(o.hold)
	for i := range o.shards {
		sh := &o.shards[i]
		sh.mu.Lock()
		sh.gen++
		for _, e := range sh.m {
			for _, s := range e.skip {
				if s.At >= cut {
					out = append(out, s)
				}
			}
		}
		clear(sh.m)
		sh.mu.Unlock()
	}
	return out
}

// Len is the number of users cached.
func (o *Online) Len() int {
	n := 0
	for i := range o.shards {
		sh := &o.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
