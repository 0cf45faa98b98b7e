package fleet

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
)

func unmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }

// ListConfig shapes the node lists.
type ListConfig struct {
	Self       string        // this host's id (excluded from redirect lists)
	TTL        time.Duration // clients cache a list this long (default 5m)
	BackoffMin time.Duration // reconnect backoff floor (default 1s)
	BackoffMax time.Duration // ceiling (default 5m)
	Race       int           // addresses raced at once (default 2)
	Stagger    time.Duration // between racers' starts (default 250ms)
	Max        int           // nodes per list (default and at most MaxNodes)
	Capacity   int           // connections a host without a limit is weighed against (DefaultCapacity)
	// Variants per place: differently (weighted random) ordered lists,
	// one per connection by its id, so a region's clients spread over its
	// hosts by spare capacity (default 8; 1 = the strict order).
	Variants int
	// Refresh: a list older than this is rebuilt when the view has changed
	// (default 1s); it is always rebuilt after TTL/4.
	Refresh time.Duration
}

func (c *ListConfig) fill() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.TTL, 5*time.Minute)
	def(&c.BackoffMin, time.Second)
	def(&c.BackoffMax, 5*time.Minute)
	def(&c.Stagger, 250*time.Millisecond)
	def(&c.Refresh, time.Second)
	if c.Race <= 0 {
		c.Race = 2
	}
	if c.Max <= 0 || c.Max > MaxNodes {
		c.Max = MaxNodes
	}
	if c.Variants <= 0 {
		c.Variants = 8
	}
}

type listKey struct {
	place   Place
	exclude bool // without this host (redirects)
}

// built is one place's signed lists, immutable.
type built struct {
	gen      uint64
	at       time.Time
	variants [][]byte // serialized SignedNodeLists; duplicates kept, so a pick follows the weights
}

type listEntry struct {
	b    atomic.Pointer[built]
	used atomic.Bool // asked for since the last refresh
}

// Lists builds and caches the signed node lists per place (region and
// carrier), never per connection: Signed is a map read and a slice index
// on the AUTH path; signing happens at most once per Refresh per place, on
// the refresher (Refresh).
type Lists struct {
	cfg  ListConfig
	view *View
	keys atomic.Pointer[KeyRing]
	kgen atomic.Uint64 // bumps on a key change, so every list is re-signed

	mu    sync.Mutex // writers of cache
	cache atomic.Pointer[map[listKey]*listEntry]
	now   func() time.Time
}

// NewLists returns the list builder over view, signing with keys.
func NewLists(cfg ListConfig, view *View, keys *KeyRing) *Lists {
	cfg.fill()
	l := &Lists{cfg: cfg, view: view, now: time.Now}
	l.keys.Store(keys)
	m := map[listKey]*listEntry{}
	l.cache.Store(&m)
	return l
}

// Config returns the list settings in force.
func (l *Lists) Config() ListConfig { return l.cfg }

// SetKeys swaps the signing keys (a reload); lists are re-signed at once.
func (l *Lists) SetKeys(r *KeyRing) {
	l.keys.Store(r)
	l.kgen.Add(1)
	l.Refresh(true)
}

// Keys returns the signing keys in force.
func (l *Lists) Keys() *KeyRing { return l.keys.Load() }

// Signed returns a serialized SignedNodeList for a client at p (pick
// chooses among the variants, e.g. the connection id), or nil when the
// fleet has no usable host for it. excludeSelf leaves this host out (for
// GOAWAY 3014). The bytes are shared: never modify them.
func (l *Lists) Signed(p Place, excludeSelf bool, pick uint64) []byte {
	k := listKey{p, excludeSelf}
	e := (*l.cache.Load())[k]
	if e == nil {
		e = l.add(k)
	}
	e.used.Store(true)
	b := e.b.Load()
	if len(b.variants) == 0 {
		return nil
	}
	return b.variants[pick%uint64(len(b.variants))]
}

// SignedList is Signed decoded into its message (not the hot path).
func (l *Lists) SignedList(p Place, excludeSelf bool, pick uint64) *pb.SignedNodeList {
	raw := l.Signed(p, excludeSelf, pick)
	if raw == nil {
		return nil
	}
	var sl pb.SignedNodeList
	if proto.Unmarshal(raw, &sl) != nil {
		return nil
	}
	return &sl
}

// add builds a place's lists the first time it is asked for.
func (l *Lists) add(k listKey) *listEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := *l.cache.Load()
	if e := old[k]; e != nil {
		return e
	}
	e := &listEntry{}
	e.b.Store(l.build(k))
	m := make(map[listKey]*listEntry, len(old)+1)
	for kk, v := range old {
		m[kk] = v
	}
	m[k] = e
	l.cache.Store(&m)
	return e
}

// Refresh rebuilds the lists that are out of date (the view changed and
// they are older than Refresh, or older than TTL/4); force rebuilds all.
// Places nobody asked for since the previous refresh are dropped, so the
// cache holds only the places clients come from. Called every second by
// the fleet's loop.
func (l *Lists) Refresh(force bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	gen := l.view.Gen() + l.kgen.Load()<<48
	old := *l.cache.Load()
	m := make(map[listKey]*listEntry, len(old))
	for k, e := range old {
		used := e.used.Swap(false)
		b := e.b.Load()
		age := now.Sub(b.at)
		if !used && age > l.cfg.TTL/4 {
			continue // nobody from there lately
		}
		m[k] = e
		if force || (b.gen != gen && age >= l.cfg.Refresh) || age >= l.cfg.TTL/4 {
			e.b.Store(l.build(k))
		}
	}
	l.cache.Store(&m)
}

// build signs the lists of one place.
func (l *Lists) build(k listKey) *built {
	now := l.now()
	b := &built{gen: l.view.Gen() + l.kgen.Load()<<48, at: now}
	keys := l.keys.Load()
	hosts := l.view.Hosts()
	exclude := ""
	if k.exclude {
		exclude = l.cfg.Self
	}
	if keys == nil {
		return b
	}
	rng := rand.New(rand.NewPCG(uint64(now.UnixNano()), 0x6c6f6e676c696e6b))
	for v := range l.cfg.Variants {
		var cs []Candidate
		if v == 0 {
			cs = Select(hosts, k.place, exclude, l.cfg.Max, l.cfg.Capacity)
		} else {
			cs = SelectRandom(hosts, k.place, exclude, l.cfg.Max, l.cfg.Capacity, rng)
		}
		if len(cs) == 0 {
			return b
		}
		nl := &pb.NodeList{
			TtlS:          uint32(l.cfg.TTL / time.Second),
			BackoffMinMs:  uint32(l.cfg.BackoffMin / time.Millisecond),
			BackoffMaxMs:  uint32(l.cfg.BackoffMax / time.Millisecond),
			IssuedMs:      now.UnixMilli(),
			Region:        k.place.Region,
			Carrier:       k.place.Carrier,
			Race:          uint32(l.cfg.Race),
			RaceStaggerMs: uint32(l.cfg.Stagger / time.Millisecond),
		}
		for _, c := range cs {
			nl.Nodes = append(nl.Nodes, &pb.Node{Addr: c.Host.Addr, WsUrl: c.Host.WS, Host: c.Host.ID, Weight: c.Weight, Region: c.Host.Region, Carrier: c.Host.Carrier})
		}
		list, err := proto.MarshalOptions{Deterministic: true}.Marshal(nl)
		if err != nil {
			return b
		}
		raw, err := proto.Marshal(keys.Sign(list))
		if err != nil {
			return b
		}
		b.variants = append(b.variants, raw)
	}
	return b
}

// Places is how many places have cached lists.
func (l *Lists) Places() int { return len(*l.cache.Load()) }
