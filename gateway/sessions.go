package gateway

import "sync"

const sessionShards = 64

// sessions maps user id to that user's authenticated connections (one per
// device). Sharded 64 ways by user id, a mutex per shard; connections of one
// user are chained through conn.next, so the table allocates nothing per
// connection beyond its map slot.
type sessions struct {
	shards [sessionShards]sessionShard
}

type sessionShard struct {
	mu sync.Mutex
	m  map[uint64]*conn
	_  [40]byte // keep shards on separate cache lines
}

func newSessions() *sessions {
	s := &sessions{}
	for i := range s.shards {
		s.shards[i].m = make(map[uint64]*conn)
	}
	return s
}

func (s *sessions) shard(uid uint64) *sessionShard {
	return &s.shards[(uid*0x9E3779B97F4A7C15)>>58]
}

// add registers c under c.uid. If a connection of the same user and device
// is already registered it is unlinked and returned, so the caller can close
// it as replaced.
func (s *sessions) add(c *conn) (replaced *conn) {
	sh := s.shard(c.uid)
	sh.mu.Lock()
	head := sh.m[c.uid]
	var prev *conn
	for p := head; p != nil; prev, p = p, p.next {
		if p.device == c.device {
			replaced = p
			if prev == nil {
				head = p.next
			} else {
				prev.next = p.next
			}
			p.next = nil
			break
		}
	}
	c.next = head
	sh.m[c.uid] = c
	sh.mu.Unlock()
	return replaced
}

// remove unregisters c; a no-op if c was replaced or never added.
func (s *sessions) remove(c *conn) {
	sh := s.shard(c.uid)
	sh.mu.Lock()
	head := sh.m[c.uid]
	var prev *conn
	for p := head; p != nil; prev, p = p, p.next {
		if p == c {
			if prev == nil {
				head = p.next
			} else {
				prev.next = p.next
			}
			p.next = nil
			if head == nil {
				delete(sh.m, c.uid)
			} else {
				sh.m[c.uid] = head
			}
			break
		}
	}
	sh.mu.Unlock()
}

// each calls fn for every connection of uid (every device when device is
// empty) under the shard lock: fn must not block. It allocates nothing.
func (s *sessions) each(uid uint64, device string, fn func(*conn)) int {
	sh := s.shard(uid)
	n := 0
	sh.mu.Lock()
	for p := sh.m[uid]; p != nil; p = p.next {
		if device == "" || p.device == device {
			fn(p)
			n++
		}
	}
	sh.mu.Unlock()
	return n
}

// count returns the number of uid's connections.
func (s *sessions) count(uid uint64) int {
	sh := s.shard(uid)
	n := 0
	sh.mu.Lock()
	for p := sh.m[uid]; p != nil; p = p.next {
		n++
	}
	sh.mu.Unlock()
	return n
}

// users returns the number of users with at least one connection.
func (s *sessions) users() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
