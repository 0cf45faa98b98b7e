package loadtest

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// The shake and open scenarios (docs/protocol.md, "Shake red packets").
//
// shake: after the ramp the connections send --shake-rate SHAKEs per second
// in all, round-robin, at most one outstanding per connection, and honour
// the server's pacing the way the protocol asks a client to: no shake on a
// connection before the retry_after_ms of its last ticketless reply, nor
// more often than a degrade reply's min_interval_ms; while a
// probability_permille is in force a shake is sent with that probability
// (the gesture is counted as suppressed otherwise). Every SHAKE_RESP is
// counted by result (ticket, no packet, no slot, event over) and by whether
// it carried a degrade hint; "shake" latency is SHAKE to SHAKE_RESP.
//
// open: every ticket received is opened at once on its connection (which
// shakes no more until the OPEN_RESP); codes 6 and 7 (unavailable, busy)
// are retried after their retry_after_ms, others counted by code. "open"
// latency is the first OPEN to the OPEN_RESP with code 0. open implies
// shake.
//
// Against the floor a shake is a 16-byte echo ('S'), so CPU per shake on
// the gateway leg compares with the floor's CPU per echo under the same
// mix of heartbeats and shakes (ratio_cpu_per_shake); open does nothing
// there.
func init() {
	registerScenario(scenarioDef{name: "shake", summary: "after the ramp, --shake-rate SHAKEs per second over the connections (honouring the server's retry and degrade hints); counts tickets, no-packet and degrade replies",
		worker: func(e *engine) workerScenario { return newShakeScenario(e, slices.Contains(e.spec.Scenarios, "open")) }})
	registerScenario(scenarioDef{name: "open", summary: "shake (as the shake scenario) and OPEN every ticket received; counts opens by code",
		worker: func(e *engine) workerScenario {
			if slices.Contains(e.spec.Scenarios, "shake") {
				return nopScenario{} // the shake scenario's instance opens
			}
			return newShakeScenario(e, true)
		}})
}

// floorShake is the floor message kind of a shake.
const floorShake = 'S'

// SHAKE_RESP results (proto/shake.proto).
const (
	shakeTicket   = 0
	shakeNone     = 1
	shakeNoSlot   = 2
	shakeOver     = 3
	openOK        = 0
	openUnavail   = 6
	openBusy      = 7
	minOpenRetryN = int64(100 * time.Millisecond)
)

type shakeScenario struct {
	nopScenario
	open   bool
	frame_ []byte // a SHAKE frame without seq (patched per send)
	acc    float64
	cursor int
	rng    *rand.Rand

	// per connection
	at        []int64  // outstanding SHAKE sent (0 none)
	seq       []uint16 // its seq
	notBefore []int64  // no shake before this (server hints)
	openAt    []int64  // outstanding OPEN sent (0 none)
	openFirst []int64  // first OPEN of the pending ticket
	openSeq   []uint16
	ticket    [][]byte // ticket to open (nil none)

	permille uint32 // the last degrade probability (0: always)
}

func newShakeScenario(e *engine, open bool) workerScenario {
	n := len(e.conns)
	s := &shakeScenario{open: open && !e.spec.Floor,
		at: make([]int64, n), seq: make([]uint16, n), notBefore: make([]int64, n),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(e.spec.ID)))}
	if s.open {
		s.openAt, s.openFirst, s.openSeq, s.ticket = make([]int64, n), make([]int64, n), make([]uint16, n), make([][]byte, n)
	}
	return s
}

func (s *shakeScenario) up(e *engine, i int) {
	s.at[i], s.notBefore[i] = 0, 0
	if s.open {
		s.openAt[i], s.ticket[i] = 0, nil
	}
}

func (s *shakeScenario) tick(e *engine) {
	if !e.rampDone || e.spec.ShakeRate <= 0 {
		return
	}
	s.acc += e.spec.ShakeRate * float64(e.dt) / float64(time.Second)
	n := len(e.conns)
	for tries := 0; s.acc >= 1 && tries < n; tries++ {
		s.cursor++
		if s.cursor >= n {
			s.cursor = 0
		}
		if s.visit(e, s.cursor) {
			s.acc--
		}
	}
	if s.acc > 1 {
		s.acc = 1 // every connection is busy or held back: no backlog
		e.extra["shake_skipped"]++
	}
}

// visit expires what timed out on connection i, retries its pending OPEN,
// and shakes if allowed; true if a shake was made (sent or suppressed).
func (s *shakeScenario) visit(e *engine, i int) bool {
	c := &e.conns[i]
	if c.state != stUp || c.slow {
		return false
	}
	to := e.spec.Timeout
	if s.at[i] != 0 {
		if e.now-s.at[i] <= to {
			return false
		}
		e.extra["shake_timeout"]++
		e.errorf("timeout:shake")
		s.at[i] = 0
	}
	if s.open {
		if s.openAt[i] != 0 {
			if e.now-s.openAt[i] <= to {
				return false
			}
			e.extra["open_timeout"]++
			e.errorf("timeout:open")
			s.openAt[i], s.ticket[i] = 0, nil
		}
		if s.ticket[i] != nil {
			if e.now >= s.notBefore[i] {
				s.sendOpen(e, i)
			}
			return false
		}
	}
	if e.now < s.notBefore[i] {
		return false
	}
	if p := s.permille; p > 0 && p < 1000 && s.rng.Uint32N(1000) >= p {
		e.extra["shake_suppressed"]++
		return true
	}
	c.seq++
	s.seq[i] = c.seq
	if e.spec.Floor {
		var m [floorMsg]byte
		m[0] = floorShake
		e.scratch = append(e.scratch[:0], m[:]...)
	} else {
		e.scratch = codec.AppendFrame(e.scratch[:0], codec.CmdShake, 0, c.seq, nil)
	}
	s.at[i] = e.now
	e.extra["shake_sent"]++
	e.write(i, e.scratch)
	return true
}

func (s *shakeScenario) sendOpen(e *engine, i int) {
	body, _ := proto.Marshal(&pb.Open{Ticket: s.ticket[i]})
	seq, _ := e.send(i, codec.CmdOpen, body)
	s.openSeq[i] = seq
	s.openAt[i] = e.now
	if s.openFirst[i] == 0 {
		s.openFirst[i] = e.now
	}
	e.extra["open_sent"]++
}

func (s *shakeScenario) floorMsg(e *engine, i int, m []byte) bool {
	if m[0] != floorShake {
		return false
	}
	if s.at[i] != 0 {
		e.record("shake", s.at[i])
		s.at[i] = 0
		e.extra["shake_ok"]++
	}
	return true
}

func (s *shakeScenario) frame(e *engine, i int, f codec.Frame) bool {
	switch f.Cmd {
	case codec.CmdShakeRsp:
		if s.at[i] == 0 || f.Seq != s.seq[i] {
			e.extra["shake_unexpected"]++
			return true
		}
		e.record("shake", s.at[i])
		s.at[i] = 0
		e.extra["shake_ok"]++
		var r pb.ShakeRsp
		if err := proto.Unmarshal(f.Body, &r); err != nil {
			e.errorf("shake:bad_response")
			return true
		}
		wait := int64(0)
		switch r.Result {
		case shakeTicket:
			e.extra["shake_ticket"]++
			if s.open && len(r.Ticket) > 0 {
				s.ticket[i] = r.Ticket
				s.openFirst[i] = 0
				s.sendOpen(e, i)
			}
		case shakeNone:
			e.extra["shake_none"]++
			wait = int64(r.RetryAfterMs) * int64(time.Millisecond)
		case shakeNoSlot:
			e.extra["shake_noslot"]++
			wait = int64(r.RetryAfterMs) * int64(time.Millisecond)
		case shakeOver:
			e.extra["shake_over"]++
			wait = int64(r.RetryAfterMs) * int64(time.Millisecond)
		default:
			e.errorf("shake:result_" + strconv.Itoa(int(r.Result)))
		}
		if r.MinIntervalMs > 0 || (r.ProbabilityPermille > 0 && r.ProbabilityPermille < 1000) {
			e.extra["shake_degraded"]++
		}
		s.permille = r.ProbabilityPermille
		if m := int64(r.MinIntervalMs) * int64(time.Millisecond); m > wait {
			wait = m
		}
		s.notBefore[i] = e.now + wait
		return true
	case codec.CmdOpenRsp:
		if !s.open || s.openAt[i] == 0 || f.Seq != s.openSeq[i] {
			e.extra["open_unexpected"]++
			return true
		}
		s.openAt[i] = 0
		var r pb.OpenRsp
		if err := proto.Unmarshal(f.Body, &r); err != nil {
			e.errorf("open:bad_response")
			s.ticket[i] = nil
			return true
		}
		switch r.Code {
		case openOK:
			e.extra["open_ok"]++
			if r.Again {
				e.extra["open_again"]++
			}
			e.extra["open_fen"] += int64(r.AmountFen)
			e.record("open", s.openFirst[i])
			s.ticket[i] = nil
		case openUnavail, openBusy:
			e.extra["open_retry"]++
			s.notBefore[i] = e.now + max(int64(r.RetryAfterMs)*int64(time.Millisecond), minOpenRetryN)
		default:
			e.extra["open_err"]++
			e.errorf("open:" + strconv.Itoa(int(r.Code)))
			s.ticket[i] = nil
		}
		return true
	}
	return false
}
