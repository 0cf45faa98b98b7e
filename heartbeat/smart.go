package heartbeat

import (
	"sync"
	"time"
)

// Smart is the client side of adaptive heartbeats: it learns, per network,
// the longest interval the path's NAT boxes tolerate, within the server's
// Policy, so phones wake their radios as rarely as the network allows.
//
// Like Tencent Mars' smart heartbeat it starts at the policy's minimum,
// probes upwards after runs of successes, backs off when the learned
// interval starts failing and relearns from scratch when failures persist,
// tries a little higher after a long stable period, and keeps state per
// network. It improves on it in one way: once a probe fails, it knows the
// NAT timeout lies between the last good interval and the failed one and
// bisects that gap down to FineStep, instead of settling a whole probe step
// (or Mars' fixed 80 s back-off) below the timeout.
//
// A success means a HEARTBEAT sent after a full interval of silence got its
// PONG; a failure means it did not (the mapping was gone). Smart is
// goroutine-safe.
type Smart struct {
	cfg   SmartConfig
	mu    sync.Mutex
	pol   Policy
	net   string
	st    NetState
	fg    bool
	store Store
}

// SmartConfig tunes the learning; zero fields take the defaults shown.
type SmartConfig struct {
	FirstSuccesses int           // successes at the minimum before the first probe (3)
	ProbeSuccesses int           // consecutive successes that confirm a probe (5)
	FineStep       time.Duration // stop bisecting when good and bad are this close (20s)
	Backoff        time.Duration // step down when the learned interval fails (80s)
	ResetFailures  int           // consecutive failures at the learned interval before relearning from the minimum (2)
	Reprobe        time.Duration // after this long stable, try ReprobeStep higher (7 days)
	ReprobeStep    time.Duration // (20s)
	Now            func() time.Time
}

func (c *SmartConfig) fill() {
	if c.FirstSuccesses <= 0 {
		c.FirstSuccesses = 3
	}
	if c.ProbeSuccesses <= 0 {
		c.ProbeSuccesses = 5
	}
	if c.FineStep <= 0 {
		c.FineStep = 20 * time.Second
	}
	if c.Backoff <= 0 {
		c.Backoff = 80 * time.Second
	}
	if c.ResetFailures <= 0 {
		c.ResetFailures = 2
	}
	if c.Reprobe <= 0 {
		c.Reprobe = 7 * 24 * time.Hour
	}
	if c.ReprobeStep <= 0 {
		c.ReprobeStep = 20 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// NetState is what Smart has learned about one network. The app persists it
// through a Store so learning survives restarts.
type NetState struct {
	Good        time.Duration `json:"good"`      // longest interval confirmed (0: not even the minimum yet)
	Bad         time.Duration `json:"bad"`       // shortest interval seen failing above Good (0: none)
	Cur         time.Duration `json:"cur"`       // interval in use: Good, or a probe above it
	Successes   int           `json:"successes"` // consecutive successes at Cur
	Failures    int           `json:"failures"`  // consecutive failures at Good
	StableSince time.Time     `json:"stable_since"`
}

// Store persists NetState per network id. The app provides it (a file,
// shared preferences, a database); MemStore keeps it in memory.
type Store interface {
	Load(network string) (NetState, bool)
	Save(network string, st NetState)
}

// MemStore is an in-memory Store.
type MemStore struct {
	mu sync.Mutex
	m  map[string]NetState
}

// Load implements Store.
func (m *MemStore) Load(n string) (NetState, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, ok := m.m[n]
	return st, ok
}

// Save implements Store.
func (m *MemStore) Save(n string, st NetState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string]NetState{}
	}
	m.m[n] = st
}

// NewSmart returns a learner for policy p on network id netID; store may be
// nil (state then lives only as long as the Smart).
func NewSmart(p Policy, netID string, store Store, cfg SmartConfig) *Smart {
	cfg.fill()
	if store == nil {
		store = &MemStore{}
	}
	s := &Smart{cfg: cfg, pol: p, store: store}
	s.load(netID)
	return s
}

func (s *Smart) load(netID string) {
	s.net = netID
	st, ok := s.store.Load(netID)
	if !ok {
		st = NetState{Cur: s.pol.Min}
	}
	s.st = st
	s.clampLocked()
}

// clampLocked keeps the state inside the policy (which the server may change).
func (s *Smart) clampLocked() {
	st := &s.st
	if st.Good > s.pol.Max {
		st.Good = s.pol.Max
	}
	if st.Good != 0 && st.Good < s.pol.Min {
		st.Good = s.pol.Min
	}
	if st.Cur < s.pol.Min || st.Cur < st.Good {
		st.Cur = max(s.pol.Min, st.Good)
	}
	if st.Cur > s.pol.Max {
		st.Cur = s.pol.Max
	}
}

// Interval is how long to stay silent before the next HEARTBEAT.
func (s *Smart) Interval() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fg {
		return s.pol.Min
	}
	return s.st.Cur
}

// State returns a copy of the current network's learned state.
func (s *Smart) State() NetState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// SetForeground switches between the short foreground interval (the
// policy's minimum, for an app the user is looking at) and the learned
// background interval. Foreground results don't teach anything.
func (s *Smart) SetForeground(fg bool) {
	s.mu.Lock()
	s.fg = fg
	s.mu.Unlock()
}

// SetNetwork saves what was learned on the current network and switches to
// netID's state (fresh if never seen).
func (s *Smart) SetNetwork(netID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if netID == s.net {
		return
	}
	s.store.Save(s.net, s.st)
	s.load(netID)
}

// SetPolicy applies a policy from the server (AUTH_OK or POLICY).
func (s *Smart) SetPolicy(p Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pol = p
	s.clampLocked()
	s.store.Save(s.net, s.st)
}

// OnSuccess records that a heartbeat after Interval() of silence was answered.
func (s *Smart) OnSuccess() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fg {
		return
	}
	st := &s.st
	now := s.cfg.Now()
	st.Successes++
	st.Failures = 0
	need := s.cfg.ProbeSuccesses
	if st.Good == 0 {
		need = s.cfg.FirstSuccesses
	}
	switch {
	case st.Cur > st.Good && st.Successes >= need: // a probe (or the first minimum) is confirmed
		st.Good, st.Successes = st.Cur, 0
		if st.Bad != 0 && st.Bad <= st.Good {
			st.Bad = 0 // the old failure no longer holds: the NAT got more generous
		}
		st.StableSince = now
		st.Cur = s.nextProbeLocked()
	case st.Cur == st.Good && st.Successes >= s.cfg.ProbeSuccesses && s.refiningLocked():
		st.Successes = 0 // back on solid ground after a failed probe: try the next one
		st.Cur = s.nextProbeLocked()
	case st.Cur == st.Good && !s.refiningLocked() && st.Good < s.pol.Max && now.Sub(st.StableSince) >= s.cfg.Reprobe:
		// Long stable: the network may have become more generous. Try a little higher.
		st.Successes = 0
		st.Cur = min(st.Good+s.cfg.ReprobeStep, s.pol.Max)
		st.StableSince = now
	}
	s.store.Save(s.net, s.st)
}

// refiningLocked reports whether there is still a gap worth probing.
func (s *Smart) refiningLocked() bool {
	st := &s.st
	if st.Good >= s.pol.Max {
		return false
	}
	if st.Bad == 0 {
		return s.pol.Step > 0
	}
	return st.Bad-st.Good > s.cfg.FineStep
}

// nextProbeLocked picks the interval to try after Good is confirmed.
func (s *Smart) nextProbeLocked() time.Duration {
	st := &s.st
	if !s.refiningLocked() {
		return st.Good
	}
	if st.Bad == 0 {
		return min(st.Good+s.pol.Step, s.pol.Max)
	}
	mid := (st.Good + st.Bad) / 2
	return mid.Truncate(time.Second)
}

// OnFailure records that a heartbeat after Interval() of silence went
// unanswered: the link died while idle, most likely a NAT timeout.
func (s *Smart) OnFailure() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fg {
		return
	}
	st := &s.st
	st.Successes = 0
	if st.Cur > st.Good && st.Good != 0 { // a probe failed: the timeout is below it
		st.Bad = st.Cur
		st.Cur = st.Good
		st.StableSince = s.cfg.Now()
		s.store.Save(s.net, s.st)
		return
	}
	// The learned interval (or the minimum, before anything was learned) failed.
	st.Failures++
	if st.Failures >= s.cfg.ResetFailures {
		*st = NetState{Cur: s.pol.Min} // the network changed under us: relearn
	} else if st.Good != 0 {
		st.Bad = st.Good
		st.Good = max(s.pol.Min, st.Good-s.cfg.Backoff)
		st.Cur = st.Good
		st.StableSince = s.cfg.Now()
	}
	s.store.Save(s.net, s.st)
}
