package push

import "sync"

const regShards = 64

// Registry maps a user id to the nodes holding that user's connections, with
// a connection count per node. It is fed by presence messages and read by
// every routed notify.
//
// Memory: one map slot per online user, value 8 bytes (two inline
// node/count slots); users on three or more nodes at once spill to a small
// overflow map. Concurrency: sharded by uid, a mutex per shard; every method
// is goroutine-safe and none allocates on the common path.
type Registry struct {
	shards [regShards]regShard
}

type slot struct {
	node  uint16 // node index + 1 (0 = empty)
	count uint16
}

type regShard struct {
	mu   sync.Mutex
	m    map[uint64][2]slot
	over map[uint64][]slot // users on more than two nodes
	_    [40]byte
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	r := &Registry{}
	for i := range r.shards {
		r.shards[i].m = make(map[uint64][2]slot)
		r.shards[i].over = make(map[uint64][]slot)
	}
	return r
}

func (r *Registry) shard(uid uint64) *regShard {
	return &r.shards[(uid*0x9E3779B97F4A7C15)>>58]
}

// Add changes the connection count of uid on node by delta (a snapshot uses
// Set). Counts never go below zero; a user with no connections left is
// removed.
func (r *Registry) Add(uid uint64, node uint16, delta int) {
	sh := r.shard(uid)
	sh.mu.Lock()
	sh.update(uid, node, func(c int) int { return c + delta })
	sh.mu.Unlock()
}

// Set sets the connection count of uid on node.
func (r *Registry) Set(uid uint64, node uint16, count int) {
	sh := r.shard(uid)
	sh.mu.Lock()
	sh.update(uid, node, func(int) int { return count })
	sh.mu.Unlock()
}

func (sh *regShard) update(uid uint64, node uint16, f func(int) int) {
	key := node + 1
	v, ok := sh.m[uid]
	if !ok {
		n := clampCount(f(0))
		if n > 0 {
			sh.m[uid] = [2]slot{{key, n}}
		}
		return
	}
	for i := range v {
		if v[i].node == key {
			v[i].count = clampCount(f(int(v[i].count)))
			if v[i].count == 0 {
				v[i] = slot{}
			}
			sh.store(uid, v)
			return
		}
	}
	if ov, ok := sh.over[uid]; ok {
		for i := range ov {
			if ov[i].node == key {
				ov[i].count = clampCount(f(int(ov[i].count)))
				if ov[i].count == 0 {
					ov = append(ov[:i], ov[i+1:]...)
					if len(ov) == 0 {
						delete(sh.over, uid)
					} else {
						sh.over[uid] = ov
					}
				}
				sh.store(uid, v)
				return
			}
		}
	}
	n := clampCount(f(0))
	if n == 0 {
		return
	}
	for i := range v {
		if v[i].node == 0 {
			v[i] = slot{key, n}
			sh.m[uid] = v
			return
		}
	}
	sh.over[uid] = append(sh.over[uid], slot{key, n})
}

// store writes v back, pulling an overflow slot in if v has room, and
// deletes the user when nothing is left.
func (sh *regShard) store(uid uint64, v [2]slot) {
	if ov, ok := sh.over[uid]; ok {
		for i := range v {
			if v[i].node == 0 && len(ov) > 0 {
				v[i], ov = ov[len(ov)-1], ov[:len(ov)-1]
			}
		}
		if len(ov) == 0 {
			delete(sh.over, uid)
		} else {
			sh.over[uid] = ov
		}
	}
	if v[0].node == 0 && v[1].node == 0 {
		delete(sh.m, uid)
		return
	}
	sh.m[uid] = v
}

func clampCount(n int) uint16 {
	if n < 0 {
		return 0
	}
	if n > 65535 {
		return 65535
	}
	return uint16(n)
}

// Lookup appends the indexes of the nodes holding uid to dst.
func (r *Registry) Lookup(uid uint64, dst []uint16) []uint16 {
	sh := r.shard(uid)
	sh.mu.Lock()
	if v, ok := sh.m[uid]; ok {
		for _, s := range v {
			if s.node != 0 {
				dst = append(dst, s.node-1)
			}
		}
		for _, s := range sh.over[uid] {
			dst = append(dst, s.node-1)
		}
	}
	sh.mu.Unlock()
	return dst
}

// DropNode removes node from every user (the node restarted, left or went
// silent). It walks the whole table: O(users), a few ms per 100k.
func (r *Registry) DropNode(node uint16) {
	key := node + 1
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for uid, v := range sh.m {
			hit := false
			for j := range v {
				if v[j].node == key {
					v[j], hit = slot{}, true
				}
			}
			if ov, ok := sh.over[uid]; ok {
				for j := 0; j < len(ov); j++ {
					if ov[j].node == key {
						ov = append(ov[:j], ov[j+1:]...)
						hit = true
						j--
					}
				}
				if len(ov) == 0 {
					delete(sh.over, uid)
				} else {
					sh.over[uid] = ov
				}
			}
			if hit {
				sh.store(uid, v)
			}
		}
		sh.mu.Unlock()
	}
}

// Users returns the number of users online somewhere.
func (r *Registry) Users() int {
	n := 0
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
