package gateway

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/longlink/longlink/codec"
)

// Connection admission: a per-node accept rate and a connection cap, and
// flapping detection for clients that reconnect too often (like EMQX's).
// A refused connection gets ERROR 3007 server_busy with a jittered
// retry_after and is closed, so refusals spread the retries out instead of
// causing the gateway's own reconnect storm.

// ConnAdmissionConfig tunes connection admission. Zero fields: no limit.
type ConnAdmissionConfig struct {
	AcceptRate     float64       // new connections per second per process (token bucket, burst = 1 s worth)
	MaxConns       int           // connections per process
	FlapWindow     time.Duration // flapping: more than FlapMax authentications of one user within FlapWindow...
	FlapMax        int
	FlapBan        time.Duration // ...refuse that user for this long (default 1 min)
	RetryAfterBase time.Duration // refusals say "retry after" this plus up to the same again at random (default 2s)
}

type connAdmission struct {
	cfg ConnAdmissionConfig // static, except the two limits below

	rate     atomic.Uint64 // math.Float64bits(accept rate); switchable at runtime
	maxConns atomic.Int64

	tokens   atomic.Int64 // accept tokens, in millitokens
	lastFill atomic.Int64 // unix nanos

	flapMu  sync.Mutex
	flaps   map[uint64]flapState // only users who reconnect (see flapping)
	refused atomic.Uint64
}

// flapState is a value in the map (no pointer, no allocation of its own);
// times in Unix nanoseconds.
type flapState struct {
	windowStart int64
	bannedUntil int64
	count       int32
}

func newConnAdmission(cfg ConnAdmissionConfig) *connAdmission {
	if cfg.FlapBan <= 0 {
		cfg.FlapBan = time.Minute
	}
	if cfg.RetryAfterBase <= 0 {
		cfg.RetryAfterBase = 2 * time.Second
	}
	a := &connAdmission{cfg: cfg, flaps: map[uint64]flapState{}}
	a.setLimits(cfg.AcceptRate, cfg.MaxConns)
	a.tokens.Store(int64(cfg.AcceptRate * 1000))
	a.lastFill.Store(time.Now().UnixNano())
	return a
}

// accept reports whether a new connection may proceed, open being the
// number already open. Runs on event loops.
func (a *connAdmission) accept(open int) bool {
	if m := a.maxConns.Load(); m > 0 && int64(open) >= m {
		return false
	}
	rate := math.Float64frombits(a.rate.Load())
	if rate <= 0 {
		return true
	}
	now := time.Now().UnixNano()
	last := a.lastFill.Swap(now)
	burst := int64(rate * 1000)
	add := int64(float64(now-last) / 1e6 * rate) // millitokens
	if t := a.tokens.Add(add); t > burst {
		a.tokens.Store(burst)
	}
	if a.tokens.Add(-1000) < 0 {
		a.tokens.Add(1000)
		return false
	}
	return true
}

// setLimits changes the accept rate and the connection cap (0: none).
func (a *connAdmission) setLimits(rate float64, maxConns int) {
	a.rate.Store(math.Float64bits(rate))
	a.maxConns.Store(int64(maxConns))
}

// Flapping is tracked only for users who reconnect: a user's first
// authentication, with none of its connections held and none closed within
// the window, leaves no entry, so idle connections cost the flapping rule
// nothing (issue 19). An entry is made when a user's connection closes
// (counting that connection's authentication) or when it authenticates while
// another of its connections is held (counting those); from then on every
// authentication is counted as before.

// flapOn reports whether the flapping rule is on.
func (a *connAdmission) flapOn() bool { return a.cfg.FlapMax > 0 && a.cfg.FlapWindow > 0 }

// flapping records an authentication of uid, which already has held
// authenticated connections here, and reports whether the user reconnects
// too often (and for how long it stays refused).
func (a *connAdmission) flapping(uid uint64, now time.Time, held int) (time.Duration, bool) {
	if a.cfg.FlapMax <= 0 || a.cfg.FlapWindow <= 0 {
		return 0, false
	}
	t := now.UnixNano()
	a.flapMu.Lock()
	defer a.flapMu.Unlock()
	st, ok := a.flaps[uid]
	if !ok {
		if held <= 0 {
			return 0, false // a first connection: nothing to remember
		}
		st = flapState{windowStart: t, count: int32(min(held, math.MaxInt32-1))}
	}
	if t < st.bannedUntil {
		return time.Duration(st.bannedUntil - t), true
	}
	if t-st.windowStart > int64(a.cfg.FlapWindow) {
		st.windowStart, st.count = t, 0
	}
	st.count++
	var ban time.Duration
	if int(st.count) > a.cfg.FlapMax {
		st.bannedUntil = t + int64(a.cfg.FlapBan)
		st.count = 0
		ban = a.cfg.FlapBan
	}
	a.flaps[uid] = st
	return ban, ban > 0
}

// closed records that an authenticated connection of uid closed: a user
// without an entry gets one counting that connection's authentication, so
// its next one is counted as a reconnect.
func (a *connAdmission) closed(uid uint64, now time.Time) {
	if a.cfg.FlapMax <= 0 || a.cfg.FlapWindow <= 0 {
		return
	}
	a.flapMu.Lock()
	if _, ok := a.flaps[uid]; !ok {
		a.flaps[uid] = flapState{windowStart: now.UnixNano(), count: 1}
	}
	a.flapMu.Unlock()
}

// forget drops users whose window and ban are over, so the flapping map
// holds only recent reconnectors. Called periodically (every FlapWindow).
func (a *connAdmission) forget(now time.Time) {
	if a.cfg.FlapMax <= 0 || a.cfg.FlapWindow <= 0 {
		return
	}
	t := now.UnixNano()
	a.flapMu.Lock()
	defer a.flapMu.Unlock()
	for id, st := range a.flaps {
		if t-st.windowStart > int64(a.cfg.FlapWindow) && t > st.bannedUntil {
			delete(a.flaps, id)
		}
	}
	if len(a.flaps) == 0 {
		a.flaps = map[uint64]flapState{} // let the old table's memory go
	}
}

// busyFrame encodes ERROR server_busy with a jittered retry hint (at least
// min), so refused clients don't come back together.
func (a *connAdmission) busyFrame(min time.Duration) []byte {
	base := max(a.cfg.RetryAfterBase, min)
	ra := base + time.Duration(rand.Int64N(int64(base)))
	return encodeError(codec.CodeServerBusy, "server busy: reconnect later", uint32(ra/time.Millisecond))
}
