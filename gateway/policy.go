package gateway

import (
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/proto/pb"
)

// policyState is the heartbeat policy in force, with what the hot paths
// need precomputed. Replaced whole (copy on write) on every change.
type policyState struct {
	ps     heartbeat.Policies
	idle   [3]uint32 // idle timeout in wheel ticks, by pb.Network
	frames [3][]byte // pre-encoded POLICY frame, by pb.Network
}

func networkIndex(n pb.Network) int {
	if n < 0 || int(n) > 2 {
		return 0
	}
	return int(n)
}

func (s *Server) newPolicyState(ps heartbeat.Policies) *policyState {
	st := &policyState{ps: ps}
	for i, n := range []pb.Network{pb.Network_NETWORK_UNKNOWN, pb.Network_NETWORK_WIFI, pb.Network_NETWORK_CELLULAR} {
		p := ps.For(n)
		st.idle[i] = s.wheel.Ticks(p.Idle)
		body, _ := proto.Marshal(p.Proto(n))
		st.frames[i] = codec.AppendFrame(nil, codec.CmdPolicy, 0, 0, body)
		for field, v := range map[string]time.Duration{"min": p.Min, "max": p.Max, "step": p.Step, "idle": p.Idle} {
			s.metrics.policy.WithLabelValues(networkName(n), field).Set(v.Seconds())
		}
	}
	return st
}

func networkName(n pb.Network) string {
	switch n {
	case pb.Network_NETWORK_WIFI:
		return "wifi"
	case pb.Network_NETWORK_CELLULAR:
		return "cellular"
	}
	return "unknown"
}

// idleTicks is the idle timeout for a connection on network n.
func (s *Server) idleTicks(n pb.Network) uint32 { return s.pol.Load().idle[networkIndex(n)] }

// HeartbeatPolicies returns the policies in force. Goroutine-safe.
func (s *Server) HeartbeatPolicies() heartbeat.Policies { return s.pol.Load().ps }

// SetHeartbeatPolicies changes the heartbeat policy at runtime: it becomes
// the switches' base policy (scaled by the degrade level in force, and
// persisted with the switches); idle deadlines move first, then every
// authenticated client gets a POLICY frame. Goroutine-safe.
func (s *Server) SetHeartbeatPolicies(ps heartbeat.Policies) error {
	if err := ps.Validate(); err != nil {
		return err
	}
	sw := s.Switches()
	pj := toPoliciesJSON(ps)
	sw.Heartbeat = &pj
	return s.SetSwitches(sw, "heartbeat policy API")
}

// setPolicies puts policies into force: idle deadlines of every
// authenticated connection move; with notify each also gets a POLICY frame.
func (s *Server) setPolicies(ps heartbeat.Policies, notify bool) {
	old := s.pol.Load()
	if old != nil && old.ps == ps {
		return
	}
	st := s.newPolicyState(ps)
	s.pol.Store(st)
	s.eachSession(func(c *conn) {
		ni := networkIndex(c.network)
		s.wheel.SetTimeout(&c.hb, st.idle[ni])
		if notify {
			_ = s.sendAsync(c, st.frames[ni], nil)
		}
	})
	s.log.Info("heartbeat policy in force", "cellular", ps.Cellular, "wifi", ps.WiFi, "unknown", ps.Unknown)
}

// eachSession calls fn for every authenticated connection that is not
// closing, a shard at a time, outside the shard locks (fn may write to
// connections; after a closing ERROR nothing more may be queued).
func (s *Server) eachSession(fn func(*conn)) {
	var batch []*conn
	for i := range s.sessions.shards {
		sh := &s.sessions.shards[i]
		batch = batch[:0]
		sh.mu.Lock()
		for _, head := range sh.m {
			for c := head; c != nil; c = c.next {
				batch = append(batch, c)
			}
		}
		sh.mu.Unlock()
		for _, c := range batch {
			if c.closeCode.Load() == 0 && !c.closing() {
				fn(c)
			}
		}
	}
}
