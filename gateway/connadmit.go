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
	flaps   map[uint64]*flapState
	refused atomic.Uint64
}

type flapState struct {
	windowStart time.Time
	count       int
	bannedUntil time.Time
}

func newConnAdmission(cfg ConnAdmissionConfig) *connAdmission {
	if cfg.FlapBan <= 0 {
		cfg.FlapBan = time.Minute
	}
	if cfg.RetryAfterBase <= 0 {
		cfg.RetryAfterBase = 2 * time.Second
	}
	a := &connAdmission{cfg: cfg, flaps: map[uint64]*flapState{}}
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

// flapping records an authentication of uid and reports whether the user
// reconnects too often (and for how long it stays refused).
func (a *connAdmission) flapping(uid uint64, now time.Time) (time.Duration, bool) {
	if a.cfg.FlapMax <= 0 || a.cfg.FlapWindow <= 0 {
		return 0, false
	}
	a.flapMu.Lock()
	defer a.flapMu.Unlock()
	st := a.flaps[uid]
	if st == nil {
		st = &flapState{windowStart: now}
		a.flaps[uid] = st
	}
	if now.Before(st.bannedUntil) {
		return st.bannedUntil.Sub(now), true
	}
	if now.Sub(st.windowStart) > a.cfg.FlapWindow {
		st.windowStart, st.count = now, 0
	}
	st.count++
	if st.count > a.cfg.FlapMax {
		st.bannedUntil = now.Add(a.cfg.FlapBan)
		st.count = 0
		return a.cfg.FlapBan, true
	}
	return 0, false
}

// forget drops users whose window and ban are over, so the flapping map
// holds only recent connectors, not every idle connection. Called
// periodically (every FlapWindow).
func (a *connAdmission) forget(now time.Time) {
	if a.cfg.FlapMax <= 0 || a.cfg.FlapWindow <= 0 {
		return
	}
	a.flapMu.Lock()
	defer a.flapMu.Unlock()
	for id, st := range a.flaps {
		if now.Sub(st.windowStart) > a.cfg.FlapWindow && now.After(st.bannedUntil) {
			delete(a.flaps, id)
		}
	}
	if len(a.flaps) == 0 {
		a.flaps = map[uint64]*flapState{} // let the old table's memory go
	}
}

// busyFrame encodes ERROR server_busy with a jittered retry hint (at least
// min), so refused clients don't come back together.
func (a *connAdmission) busyFrame(min time.Duration) []byte {
	base := max(a.cfg.RetryAfterBase, min)
	ra := base + time.Duration(rand.Int64N(int64(base)))
	return encodeError(codec.CodeServerBusy, "server busy: reconnect later", uint32(ra/time.Millisecond))
}
