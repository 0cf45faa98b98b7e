package loadtest

import (
	"sort"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// A scenario is what the connections do once they are up. Each has a
// worker-side part (runs inside every client worker's epoll loop, so it must
// not block) and optionally a parent-side part (runs in the supervisor once a
// second, e.g. to trigger a reconnect storm in every worker at once, or
// later to drive the push API). Adding a scenario is one file whose init
// registers a scenarioDef.
type scenarioDef struct {
	name    string
	summary string
	// unavailable, when not empty, says why the scenario cannot run yet.
	unavailable string
	worker      func(e *engine) workerScenario
	parent      func(l *leg) parentHook
}

// workerScenario hooks into a client worker's loop. Embed nopScenario and
// override what you need.
type workerScenario interface {
	prepare(e *engine, i int, fd int)           // socket of connection i made, not yet connected
	up(e *engine, i int)                        // connection i just came up
	tick(e *engine)                             // every loop tick (5 ms)
	frame(e *engine, i int, f codec.Frame) bool // a frame the engine does not consume itself; true if handled
	command(e *engine, cmd string)              // a command line from the parent
	phaseDone(e *engine, phase string)          // "ramp" or "reconnect" finished in this worker
	floorMsg(e *engine, i int, m []byte) bool   // a 16-byte floor message the engine does not consume; true if handled
	// response: the answer to connection i's outstanding call (e.call),
	// sent at sentAt; code is the Response code, or respTimeout.
	response(e *engine, i int, code uint32, sentAt int64)
}

// parentHook runs in the supervisor once a second with the leg's state.
type parentHook interface {
	second(l *leg, now time.Time)
}

type nopScenario struct{}

func (nopScenario) prepare(*engine, int, int)            {}
func (nopScenario) up(*engine, int)                      {}
func (nopScenario) tick(*engine)                         {}
func (nopScenario) frame(*engine, int, codec.Frame) bool { return false }
func (nopScenario) command(*engine, string)              {}
func (nopScenario) phaseDone(*engine, string)            {}
func (nopScenario) floorMsg(*engine, int, []byte) bool   { return false }
func (nopScenario) response(*engine, int, uint32, int64) {}

var scenarios = map[string]scenarioDef{}

func registerScenario(d scenarioDef) { scenarios[d.name] = d }

func scenarioNames() []string {
	var out []string
	for n := range scenarios {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func init() {
	registerScenario(scenarioDef{name: "idle", summary: "connect, authenticate and hold with heartbeats every --heartbeat"})
	registerScenario(scenarioDef{name: "heartbeat", summary: "heartbeat storm: after the ramp every connection heartbeats every --storm-interval",
		worker: func(*engine) workerScenario { return stormScenario{} }})
	registerScenario(scenarioDef{name: "rpc", summary: "after the ramp, --rpc-rate calls per second of --method over the connections",
		worker: newRPCScenario})
	registerScenario(scenarioDef{name: "reconnect", summary: "a quarter into the steady state every connection drops (RST) and reconnects as fast as allowed; measures accept+auth rate",
		worker: func(*engine) workerScenario { return reconnectScenario{} }, parent: func(*leg) parentHook { return &reconnectTrigger{} }})
	registerScenario(scenarioDef{name: "slow", summary: "--slow-frac of the connections stop reading and keep sending --slow-body echo calls; measures how the server sheds them",
		worker: newSlowScenario})
}

// stormScenario switches every connection to the storm interval after the ramp.
type stormScenario struct{ nopScenario }

func (stormScenario) phaseDone(e *engine, phase string) {
	if phase == "ramp" && e.spec.Storm > 0 {
		e.hbInterval = e.spec.Storm
	}
}

// rpcScenario issues calls at a fixed rate, one outstanding per connection.
type rpcScenario struct {
	nopScenario
	body   []byte
	acc    float64
	cursor int
}

func newRPCScenario(e *engine) workerScenario {
	s := &rpcScenario{}
	body := []byte(e.spec.CallBody)
	if e.spec.CallBody == "" {
		body = make([]byte, e.spec.RPCBody)
	}
	s.body, _ = proto.Marshal(&pb.Request{Method: e.spec.Method, Body: body})
	return s
}

func (s *rpcScenario) tick(e *engine) {
	if !e.rampDone || e.spec.RPCRate <= 0 {
		return
	}
	s.acc += e.spec.RPCRate * float64(e.dt) / float64(time.Second)
	n := len(e.conns)
	for tries := 0; s.acc >= 1 && tries < n; tries++ {
		s.cursor++
		if s.cursor >= n {
			s.cursor = 0
		}
		if e.call(s.cursor, s.body) {
			s.acc--
		}
	}
	if s.acc > 1 {
		s.acc = 1 // every connection has a call outstanding: don't build a backlog
		e.extra["rpc_skipped"]++
	}
}

// reconnectScenario drops and reconnects everything on the parent's command.
type reconnectScenario struct{ nopScenario }

func (reconnectScenario) command(e *engine, cmd string) {
	if cmd == "reconnect" {
		e.restart()
	}
}

// With --encrypt a connection prepares its next handshake once it is up in
// the ramp, and after the storm (prepareNext), so the storm's reconnects do
// one X25519 each in the tool, as clients that prepared while idle do.
func (reconnectScenario) up(e *engine, i int) {
	if e.phase == "ramp" {
		e.prepareNext(i)
	}
}

func (reconnectScenario) phaseDone(e *engine, phase string) {
	if phase == "reconnect" {
		for i := range e.conns {
			e.prepareNext(i)
		}
	}
}

// reconnectTrigger tells every worker to reconnect at once, a quarter of the
// way into the steady state (at least half a second in).
type reconnectTrigger struct{ sent bool }

func (r *reconnectTrigger) second(l *leg, now time.Time) {
	if r.sent || l.steadyAt.IsZero() {
		return
	}
	wait := l.deadline.Sub(l.steadyAt) / 4
	if wait < 500*time.Millisecond {
		wait = 500 * time.Millisecond
	}
	if now.Sub(l.steadyAt) >= wait {
		r.sent = true
		l.broadcast(l.clients, "reconnect")
	}
}

// slowScenario makes every k-th connection a slow consumer.
type slowScenario struct {
	nopScenario
	every  int
	frame_ []byte
	acc    float64
	cursor int
	count  int
}

func newSlowScenario(e *engine) workerScenario {
	s := &slowScenario{}
	if e.spec.SlowFrac <= 0 {
		s.every = 0
		return s
	}
	s.every = int(1/e.spec.SlowFrac + 0.5)
	if s.every < 1 {
		s.every = 1
	}
	if e.spec.Floor {
		n := (e.spec.SlowBody + floorMsg - 1) / floorMsg
		s.frame_ = make([]byte, n*floorMsg)
		for i := 0; i < n; i++ {
			s.frame_[i*floorMsg] = 'S'
		}
	} else {
		body, _ := proto.Marshal(&pb.Request{Method: "echo", Body: make([]byte, e.spec.SlowBody)})
		s.frame_ = codec.AppendFrame(nil, codec.CmdRequest, 0, 0, body)
	}
	return s
}

func (s *slowScenario) isSlow(e *engine, i int) bool {
	return s.every > 0 && (e.spec.First+i)%s.every == 0
}

// prepare gives a slow consumer a small receive buffer, as a stalled phone
// has, so the server's side fills sooner.
func (s *slowScenario) prepare(e *engine, i int, fd int) {
	if s.isSlow(e, i) {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
	}
}

func (s *slowScenario) up(e *engine, i int) {
	if !s.isSlow(e, i) {
		return
	}
	c := &e.conns[i]
	c.slow = true
	c.t0 = e.now
	if e.phase == "ramp" {
		s.count++
		e.extra["slow_conns"] = int64(s.count)
	}
}

func (s *slowScenario) tick(e *engine) {
	if s.count == 0 {
		return
	}
	n := len(e.conns)
	s.acc += float64(n) * float64(e.dt) / float64(e.spec.SlowInterval)
	for ; s.acc >= 1; s.acc-- {
		s.cursor++
		if s.cursor >= n {
			s.cursor = 0
		}
		c := &e.conns[s.cursor]
		if c.slow && c.state == stUp {
			e.extra["slow_sent"]++
			e.write(s.cursor, s.frame_)
		}
	}
}
