package loadtest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/longlink/longlink/client"
	"github.com/longlink/longlink/proto/pb"
)

// Fleet support of a worker (docs/loadtest.md "Fleet"): first connects go
// round-robin over the targets (seeds); with --reconnect a dropped
// connection comes back after a jittered backoff (at once after a GOAWAY
// 3014 that carried a list), to the newest verified node list's hosts
// when there is one, else to the seeds; the time from the drop to the new
// AUTH_OK goes to the "reconnect" histogram. No racing here: the tool
// spreads its connections over the list instead (the SDKs race).

const (
	reconnectMin = 500_000_000    // ns: first backoff 0.25-0.75 s, doubling
	reconnectMax = 30_000_000_000 // ns
	maxTargets   = 1 << 12
)

type fleetState struct {
	targets []unix.Sockaddr
	index   map[string]int // "ip:port" → targets index
	seeds   int            // targets[:seeds] are the seeds
	pins    []client.FleetPin
	list    []int // the newest verified list's targets, in order
	issued  int64
	lastSig string
	retryQ  []int32
}

func (e *engine) initFleet() error {
	f := &e.fleet
	f.index = map[string]int{}
	ts := e.spec.Targets
	if len(ts) == 0 {
		ts = []string{e.spec.Target}
	}
	for _, t := range ts {
		if _, err := f.add(t, e.family); err != nil {
			return fmt.Errorf("target %q: %v", t, err)
		}
	}
	f.seeds = len(f.targets)
	for _, p := range e.spec.FleetPins {
		pin, err := client.ParseFleetPin(p)
		if err != nil {
			return err
		}
		f.pins = append(f.pins, pin)
	}
	return nil
}

func (f *fleetState) add(addr string, family int) (int, error) {
	if i, ok := f.index[addr]; ok {
		return i, nil
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return 0, err
	}
	sa, fam := sockaddr(ap.Addr(), ap.Port())
	if fam != family || len(f.targets) >= maxTargets {
		return 0, fmt.Errorf("address family or count")
	}
	f.index[addr] = len(f.targets)
	f.targets = append(f.targets, sa)
	return len(f.targets) - 1, nil
}

// takeList verifies a signed list and keeps it if newer; it reports
// whether it did. One verification per distinct signature.
func (e *engine) takeList(sl *pb.SignedNodeList) bool {
	f := &e.fleet
	if sl == nil || len(f.pins) == 0 || string(sl.Signature) == f.lastSig {
		return false
	}
	l, err := client.VerifyNodeList(sl, f.pins)
	if err != nil {
		e.errorf("fleet:list_refused")
		return false
	}
	f.lastSig = string(sl.Signature)
	if l.IssuedMs <= f.issued {
		return false
	}
	var idx []int
	for _, n := range l.Nodes {
		if i, err := f.add(n.Addr, e.family); err == nil {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return false
	}
	f.list, f.issued = idx, l.IssuedMs
	e.extra["fleet_lists"]++
	return true
}

// firstTarget is connection i's seed.
func (e *engine) firstTarget(i int) uint16 {
	return uint16((e.spec.First + i) % e.fleet.seeds)
}

// nextTarget picks where connection i reconnects: the list (spread by
// connection and attempt), else the seeds.
func (e *engine) nextTarget(i int) uint16 {
	c := &e.conns[i]
	f := &e.fleet
	// A hash of the connection, not its index: the seeds were assigned
	// round-robin by index, so index order would send every connection of
	// one dead seed to the same next host.
	k := int(uint32(e.spec.First+i)*2654435761>>8) + int(c.tries)
	if len(f.list) > 0 {
		t := f.list[k%len(f.list)]
		if len(f.list) > 1 && uint16(t) == c.tgt {
			t = f.list[(k+1)%len(f.list)] // not straight back to the host that dropped or sent us away
		}
		return uint16(t)
	}
	if t := uint16(k % f.seeds); t != c.tgt || f.seeds == 1 {
		return t
	}
	return uint16((k + 1) % f.seeds)
}

// scheduleReconnect queues connection i (dropped, or a failed reconnect).
func (e *engine) scheduleReconnect(i int, now bool) {
	c := &e.conns[i]
	if c.downAt == 0 {
		c.downAt = e.now
	}
	d := int64(0)
	if !now {
		ceil := min(int64(reconnectMin)<<min(c.tries, 6), reconnectMax)
		d = ceil/2 + rand.Int64N(ceil)
	}
	c.retryAt = e.now + d
	c.tgt = e.nextTarget(i)
	if c.tries < 255 {
		c.tries++
	}
	c.state = stIdle
	e.fleet.retryQ = append(e.fleet.retryQ, int32(i))
}

// retries starts the queued reconnects that are due.
func (e *engine) retries() {
	q := e.fleet.retryQ[:0]
	for _, i := range e.fleet.retryQ {
		c := &e.conns[i]
		if c.state != stIdle || c.retryAt == 0 {
			continue
		}
		if e.now < c.retryAt || e.inflight >= e.spec.Inflight {
			q = append(q, i)
			continue
		}
		c.retryAt = 0
		e.startConn(int(i))
	}
	e.fleet.retryQ = q
}
