package heartbeat

import (
	"fmt"
	"time"

	"github.com/longlink/longlink/proto/pb"
)

// Policy is what the server advises one kind of network: clients heartbeat
// no more often than Min and no less often than Max, probing upwards by Step;
// the server closes connections silent for Idle.
type Policy struct {
	Min, Max, Step, Idle time.Duration
}

// Validate checks the invariants the server relies on; in particular the
// idle deadline must leave room for a client at Max to miss one heartbeat.
func (p Policy) Validate() error {
	switch {
	case p.Min <= 0 || p.Max < p.Min:
		return fmt.Errorf("heartbeat: need 0 < min (%v) <= max (%v)", p.Min, p.Max)
	case p.Step < 0:
		return fmt.Errorf("heartbeat: negative probe step")
	case p.Idle < 2*p.Max:
		return fmt.Errorf("heartbeat: idle timeout %v is shorter than twice the max interval %v", p.Idle, p.Max)
	}
	return nil
}

// Proto converts to the wire form.
func (p Policy) Proto(n pb.Network) *pb.HeartbeatPolicy {
	return &pb.HeartbeatPolicy{
		MinIntervalS: secs(p.Min), MaxIntervalS: secs(p.Max), ProbeStepS: secs(p.Step),
		IdleTimeoutS: secs(p.Idle), Network: n,
	}
}

// FromProto converts from the wire form.
func FromProto(h *pb.HeartbeatPolicy) Policy {
	return Policy{
		Min: time.Duration(h.GetMinIntervalS()) * time.Second, Max: time.Duration(h.GetMaxIntervalS()) * time.Second,
		Step: time.Duration(h.GetProbeStepS()) * time.Second, Idle: time.Duration(h.GetIdleTimeoutS()) * time.Second,
	}
}

func secs(d time.Duration) uint32 { return uint32((d + time.Second - 1) / time.Second) }

// Policies holds one Policy per network the client reports.
type Policies struct {
	Unknown, WiFi, Cellular Policy
}

// For returns the policy for network n.
func (ps Policies) For(n pb.Network) Policy {
	switch n {
	case pb.Network_NETWORK_WIFI:
		return ps.WiFi
	case pb.Network_NETWORK_CELLULAR:
		return ps.Cellular
	}
	return ps.Unknown
}

// Validate checks every policy.
func (ps Policies) Validate() error {
	for n, p := range map[string]Policy{"unknown": ps.Unknown, "wifi": ps.WiFi, "cellular": ps.Cellular} {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}
	return nil
}

// DefaultPolicies follow the carriers' NAT timeouts reported by WeChat and
// Mars (about 5 minutes on some cellular networks to over 28 on others):
// start at 3.5 min, probe in 1 min steps up to just under 10 min, and evict
// after twice the max plus a minute. Wi-Fi routers keep mappings longer.
func DefaultPolicies() Policies {
	cell := Policy{Min: 210 * time.Second, Max: 580 * time.Second, Step: 60 * time.Second}
	cell.Idle = 2*cell.Max + time.Minute
	wifi := Policy{Min: 270 * time.Second, Max: 900 * time.Second, Step: 90 * time.Second}
	wifi.Idle = 2*wifi.Max + time.Minute
	return Policies{Unknown: cell, WiFi: wifi, Cellular: cell}
}

// Scale returns ps with every interval and deadline multiplied by f: the
// degrade mode's "heartbeat less" lever (f > 1) applied to all networks at once.
func (ps Policies) Scale(f float64) Policies {
	sc := func(p Policy) Policy {
		m := func(d time.Duration) time.Duration { return time.Duration(float64(d) * f) }
		return Policy{Min: m(p.Min), Max: m(p.Max), Step: m(p.Step), Idle: m(p.Idle)}
	}
	return Policies{Unknown: sc(ps.Unknown), WiFi: sc(ps.WiFi), Cellular: sc(ps.Cellular)}
}
