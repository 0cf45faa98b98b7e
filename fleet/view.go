package fleet

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Announcement is what one gateway worker says about itself every
// Interval, on SubjectState+host (JSON).
type Announcement struct {
	Host       string  `json:"host"`
	Worker     string  `json:"worker"` // the worker's node id (its push node name)
	Addr       string  `json:"addr"`   // TCP address clients dial
	WS         string  `json:"ws,omitempty"`
	Region     string  `json:"region,omitempty"`
	Carrier    string  `json:"carrier,omitempty"`
	Conns      int     `json:"conns"`
	MaxConns   int     `json:"max_conns,omitempty"`
	CPU        float64 `json:"cpu"`       // this process's CPU use, cores busy / cores
	Admission  int     `json:"admission"` // admission level (0 = normal)
	Degrade    int     `json:"degrade"`
	Draining   bool    `json:"draining,omitempty"`
	Evacuating bool    `json:"evacuating,omitempty"`
	Goodbye    bool    `json:"goodbye,omitempty"` // the worker is leaving: forget it now
	SentMS     int64   `json:"sent_ms"`
	Incarn     uint64  `json:"inc"` // the worker process's incarnation
}

// Limits of an announcement's fields: they end up in every client's node
// list (AUTH_OK), so an oversized or malformed one (a bug, or a forged
// announcement, docs/fleet.md "Trust model") must not reach a list.
const (
	maxAddr   = 255
	maxWS     = 512
	maxWorker = 256
)

// check reports what is wrong with a's fields, or nil.
func (a *Announcement) check() error {
	if err := checkTag(a.Host); err != nil {
		return fmt.Errorf("host id %w", err)
	}
	if a.Worker == "" || len(a.Worker) > maxWorker {
		return fmt.Errorf("worker id: want 1-%d bytes", maxWorker)
	}
	for _, t := range []string{a.Region, a.Carrier} {
		if t != "" {
			if err := checkTag(t); err != nil {
				return fmt.Errorf("region/carrier %w", err)
			}
		}
	}
	if a.Addr != "" {
		h, port, err := net.SplitHostPort(a.Addr)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 || h == "" || len(a.Addr) > maxAddr {
			return fmt.Errorf("address %.64q: want host:port, at most %d bytes", a.Addr, maxAddr)
		}
	}
	if a.WS != "" && (len(a.WS) > maxWS || !strings.HasPrefix(a.WS, "ws://") && !strings.HasPrefix(a.WS, "wss://") || strings.ContainsAny(a.WS, " \t\r\n")) {
		return fmt.Errorf("WebSocket URL %.64q: want ws:// or wss://, at most %d bytes", a.WS, maxWS)
	}
	if a.Conns < 0 || a.MaxConns < 0 || a.Admission < 0 || a.Degrade < 0 || a.CPU < 0 {
		return errors.New("negative load figures")
	}
	return nil
}

// Host is one host of the fleet view: its workers' announcements merged.
type Host struct {
	ID         string    `json:"id"`
	Addr       string    `json:"addr"`
	WS         string    `json:"ws_url,omitempty"`
	Region     string    `json:"region,omitempty"`
	Carrier    string    `json:"carrier,omitempty"`
	Conns      int       `json:"conns"`     // sum over the workers
	MaxConns   int       `json:"max_conns"` // sum; 0 if any worker has no limit
	CPU        float64   `json:"cpu"`
	Admission  int       `json:"admission"` // the highest of the workers'
	Degrade    int       `json:"degrade"`
	Draining   bool      `json:"draining"` // any worker
	Evacuating bool      `json:"evacuating"`
	Workers    []string  `json:"workers"` // worker node ids, sorted
	LastSeen   time.Time `json:"last_seen"`
}

// Usable reports whether clients may be sent to h.
func (h *Host) Usable() bool { return !h.Draining && !h.Evacuating && h.Addr != "" }

type workerEntry struct {
	a    Announcement
	seen time.Time
}

// View is the fleet as heard on NATS. Goroutine-safe.
type View struct {
	expiry time.Duration

	mu      sync.Mutex
	workers map[[2]string]*workerEntry // (host, worker)
	gen     uint64                     // changes whenever the view does
	hosts   []Host                     // cached merge, nil = stale
	onLeave []func(Host)
}

// NewView returns an empty view whose workers expire after expiry of silence.
func NewView(expiry time.Duration) *View {
	return &View{expiry: expiry, workers: map[[2]string]*workerEntry{}}
}

// OnLeave registers fn, called (outside the view's lock) with the last
// known state of a host whose every worker has expired or said goodbye.
func (v *View) OnLeave(fn func(Host)) {
	v.mu.Lock()
	v.onLeave = append(v.onLeave, fn)
	v.mu.Unlock()
}

// Apply records an announcement heard at now.
func (v *View) Apply(a Announcement, now time.Time) {
	if a.check() != nil {
		return
	}
	k := [2]string{a.Host, a.Worker}
	v.mu.Lock()
	if a.Goodbye {
		left := v.removeLocked(k)
		fns := v.onLeave
		v.mu.Unlock()
		for _, h := range left {
			for _, fn := range fns {
				fn(h)
			}
		}
		return
	}
	e := v.workers[k]
	if e == nil {
		e = &workerEntry{}
		v.workers[k] = e
	}
	e.a, e.seen = a, now
	v.gen++
	v.hosts = nil
	v.mu.Unlock()
}

// removeLocked forgets one worker; it returns its host if that was its last.
func (v *View) removeLocked(k [2]string) []Host {
	if _, ok := v.workers[k]; !ok {
		return nil
	}
	before := v.hostLocked(k[0])
	delete(v.workers, k)
	v.gen++
	v.hosts = nil
	if v.hostLocked(k[0]) == nil && before != nil {
		return []Host{*before}
	}
	return nil
}

// Expire forgets the workers silent since now-expiry and returns the hosts
// that left.
func (v *View) Expire(now time.Time) []Host {
	cut := now.Add(-v.expiry)
	v.mu.Lock()
	var left []Host
	for k, e := range v.workers {
		if e.seen.Before(cut) {
			left = append(left, v.removeLocked(k)...)
		}
	}
	fns := v.onLeave
	v.mu.Unlock()
	for _, h := range left {
		for _, fn := range fns {
			fn(h)
		}
	}
	return left
}

// Gen changes whenever the view does.
func (v *View) Gen() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.gen
}

// Hosts returns the hosts, sorted by id. The slice is shared: do not modify.
func (v *View) Hosts() []Host {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.hostsLocked()
}

// Host returns one host's merged state.
func (v *View) Host(id string) (Host, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	h := v.hostLocked(id)
	if h == nil {
		return Host{}, false
	}
	return *h, true
}

// Age is how old the oldest live worker's last announcement is (0 if none).
func (v *View) Age(now time.Time) time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	var age time.Duration
	for _, e := range v.workers {
		age = max(age, now.Sub(e.seen))
	}
	return age
}

func (v *View) hostLocked(id string) *Host {
	for _, h := range v.hostsLocked() {
		if h.ID == id {
			return &h
		}
	}
	return nil
}

func (v *View) hostsLocked() []Host {
	if v.hosts != nil {
		return v.hosts
	}
	by := map[string]*Host{}
	unlimited := map[string]bool{}
	for k, e := range v.workers {
		a := e.a
		h := by[k[0]]
		if h == nil {
			h = &Host{ID: a.Host, Addr: a.Addr, WS: a.WS, Region: a.Region, Carrier: a.Carrier}
			by[k[0]] = h
		}
		h.Conns += a.Conns
		h.MaxConns += a.MaxConns
		unlimited[h.ID] = unlimited[h.ID] || a.MaxConns == 0
		h.CPU = max(h.CPU, a.CPU)
		h.Admission = max(h.Admission, a.Admission)
		h.Degrade = max(h.Degrade, a.Degrade)
		h.Draining = h.Draining || a.Draining
		h.Evacuating = h.Evacuating || a.Evacuating
		h.Workers = append(h.Workers, a.Worker)
		if e.seen.After(h.LastSeen) {
			h.LastSeen = e.seen
			if a.Addr != "" { // the freshest worker's addresses and tags win
				h.Addr, h.WS, h.Region, h.Carrier = a.Addr, a.WS, a.Region, a.Carrier
			}
		}
	}
	out := make([]Host, 0, len(by))
	for _, h := range by {
		if unlimited[h.ID] {
			h.MaxConns = 0
		}
		slices.Sort(h.Workers)
		out = append(out, *h)
	}
	slices.SortFunc(out, func(a, b Host) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	v.hosts = out
	return out
}
