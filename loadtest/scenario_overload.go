package loadtest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// The overload scenario drives a mix of forwarded calls over methods of
// different business priorities (--mix, e.g. sleep.hi:1,sleep.lo:4 with the
// gateway started with --priority sleep.hi=1) through rate steps (--steps,
// e.g. unloaded:15s:1000,overload:20s:9000,recovery:15s:1000, counted from
// the steady state), and reports per step and method: calls offered,
// admitted, shed (code 2002 busy), p50/p99 of the admitted calls (over the
// whole step and after --settle), and which users were served: per user
// and method, each second after --settle in which it called is "served"
// (every call admitted), "shed" (every call shed) or "mixed"; a user whose
// every such second was served is consistently served. Shed calls are not
// retried (the tool is an open-loop load generator, not a polite client).
//
// Each call picks its method at random by weight on the next connection
// round-robin (one outstanding per connection, as the rpc scenario), so
// every user calls every method. The supervisor switches steps and tells
// the workers ("ovstep K RATE"); a worker folds its per-user tallies into
// counters at each switch and at stop.
func init() {
	registerScenario(scenarioDef{name: "overload", summary: "calls of a --mix of methods at --steps rates (e.g. 3x capacity); per method: admitted, shed (busy), p50/p99 of admitted, users consistently served, recovery",
		worker: newOverloadScenario, parent: func(l *leg) parentHook { return &overloadDriver{} }})
}

// mixEntry is one method of --mix.
type mixEntry struct {
	Method string  `json:"method"`
	Weight float64 `json:"weight"`
}

// rateStep is one step of --steps.
type rateStep struct {
	Name string        `json:"name"`
	Dur  time.Duration `json:"dur_ns"`
	Rate float64       `json:"rate"`
}

func parseMix(s string) ([]mixEntry, error) {
	var out []mixEntry
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		m, w, hasW := strings.Cut(part, ":")
		e := mixEntry{Method: m, Weight: 1}
		if hasW {
			v, err := strconv.ParseFloat(w, 64)
			if err != nil || v <= 0 {
				return nil, fmt.Errorf("mix %q: weight must be a positive number", part)
			}
			e.Weight = v
		}
		if m == "" {
			return nil, fmt.Errorf("mix %q: no method", part)
		}
		out = append(out, e)
	}
	if len(out) == 0 || len(out) > 8 {
		return nil, errors.New("mix: one to eight methods, method[:weight],…")
	}
	return out, nil
}

func parseSteps(s string) ([]rateStep, error) {
	var out []rateStep
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		f := strings.Split(part, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("steps %q: want name:duration:rate", part)
		}
		d, err := time.ParseDuration(f[1])
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("steps %q: bad duration", part)
		}
		r, err := parseRate(f[2])
		if err != nil {
			return nil, fmt.Errorf("steps %q: %v", part, err)
		}
		out = append(out, rateStep{Name: f[0], Dur: d, Rate: r})
	}
	return out, nil
}

// userTally is one user's seconds for one method in the current step.
type userTally struct {
	sec                 int32 // second (since the step's settle point) of cur
	cur                 uint8 // bit 0: a call admitted in sec, bit 1: one shed
	served, shed, mixed uint16
	calls               uint32
}

type overloadScenario struct {
	nopScenario
	mix     []mixEntry
	cum     []float64
	bodies  [][]byte
	names   []string // counter and histogram names per method
	rate    float64
	acc     float64
	cursor  int
	rng     *rand.Rand
	pending []uint8 // method of connection i's outstanding call

	step     int
	settleAt int64 // tallies count from here
	tallies  [][]userTally
}

func newOverloadScenario(e *engine) workerScenario {
	// Rate 0 until the supervisor starts the first step.
	s := &overloadScenario{mix: e.spec.Mix, step: -1,
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(e.spec.ID)+7))}
	body := []byte(e.spec.CallBody)
	if e.spec.CallBody == "" {
		body = make([]byte, e.spec.RPCBody)
	}
	total := 0.0
	for _, m := range s.mix {
		total += m.Weight
		s.cum = append(s.cum, total)
		b, _ := proto.Marshal(&pb.Request{Method: m.Method, Body: body})
		s.bodies = append(s.bodies, b)
	}
	s.pending = make([]uint8, len(e.conns))
	s.tallies = make([][]userTally, len(s.mix))
	for k := range s.tallies {
		s.tallies[k] = make([]userTally, len(e.conns))
	}
	return s
}

func (s *overloadScenario) tick(e *engine) {
	if !e.rampDone || s.rate <= 0 || len(s.mix) == 0 {
		return
	}
	s.acc += s.rate * float64(e.dt) / float64(time.Second)
	n := len(e.conns)
	total := s.cum[len(s.cum)-1]
	for tries := 0; s.acc >= 1 && tries < n; tries++ {
		s.cursor++
		if s.cursor >= n {
			s.cursor = 0
		}
		x := s.rng.Float64() * total
		m := 0
		for m < len(s.cum)-1 && x >= s.cum[m] {
			m++
		}
		if e.call(s.cursor, s.bodies[m]) {
			s.pending[s.cursor] = uint8(m)
			e.extra["ov:"+s.mix[m].Method+":sent"]++
			s.acc--
		}
	}
	if s.acc > 1 {
		s.acc = 1
		e.extra["ov_skipped"]++
	}
}

func (s *overloadScenario) response(e *engine, i int, code uint32, sent int64) {
	m := int(s.pending[i])
	if m >= len(s.mix) {
		return
	}
	name := s.mix[m].Method
	admitted, shed := false, false
	switch code {
	case 0:
		admitted = true
		e.extra["ov:"+name+":ok"]++
		e.record("ov:"+name, sent)
	case uint32(codec.CodeBusy):
		shed = true
		e.extra["ov:"+name+":shed"]++
	case respTimeout:
		e.extra["ov:"+name+":timeout"]++
	default:
		admitted = true // admitted, then failed
		e.extra["ov:"+name+":err"]++
	}
	if s.settleAt == 0 || sent < s.settleAt || (!admitted && !shed) {
		return
	}
	t := &s.tallies[m][i]
	sec := int32((sent - s.settleAt) / int64(time.Second))
	if t.cur != 0 && sec != t.sec {
		t.fold()
	}
	t.sec = sec
	t.calls++
	if admitted {
		t.cur |= 1
	} else {
		t.cur |= 2
	}
}

func (t *userTally) fold() {
	switch t.cur {
	case 1:
		t.served++
	case 2:
		t.shed++
	case 3:
		t.mixed++
	}
	t.cur = 0
}

// minUserSecs is how many settled seconds with calls a user needs to be
// classified.
const minUserSecs = 3

// flush turns the step's per-user tallies into counters and resets them.
func (s *overloadScenario) flush(e *engine) {
	if s.step < 0 {
		return
	}
	for m, ts := range s.tallies {
		p := "ovu:" + strconv.Itoa(s.step) + ":" + s.mix[m].Method + ":"
		for i := range ts {
			t := &ts[i]
			t.fold()
			if secs := int(t.served) + int(t.shed) + int(t.mixed); secs >= minUserSecs {
				e.extra[p+"users"]++
				e.extra[p+"calls"] += int64(t.calls)
				e.extra[p+"secs"] += int64(secs)
				switch {
				case int(t.served) == secs:
					e.extra[p+"served"]++
				case int(t.shed) == secs:
					e.extra[p+"shed"]++
				default:
					e.extra[p+"mixed"]++
				}
			}
			*t = userTally{}
		}
	}
}

func (s *overloadScenario) command(e *engine, cmd string) {
	f := strings.Fields(cmd)
	switch {
	case len(f) == 1 && f[0] == "stop":
		s.flush(e)
	case len(f) == 3 && f[0] == "ovstep":
		s.flush(e)
		s.step, _ = strconv.Atoi(f[1])
		s.rate, _ = strconv.ParseFloat(f[2], 64)
		s.settleAt = e.now + e.spec.Settle
	}
}

// overloadDriver switches the steps from the start of the steady state.
type overloadDriver struct {
	next int
	at   time.Time
}

func (d *overloadDriver) second(l *leg, now time.Time) {
	steps := l.cfg.Steps
	if l.steadyAt.IsZero() || d.next >= len(steps) || (d.next > 0 && now.Before(d.at)) {
		return
	}
	st := steps[d.next]
	c, _, _, _ := l.sum()
	l.mu.Lock()
	l.ovMarks = append(l.ovMarks, ovMark{step: d.next, at: now, c: c})
	l.mu.Unlock()
	l.broadcast(l.clients, fmt.Sprintf("ovstep %d %g", d.next, st.Rate/float64(len(l.clients))))
	l.logf("overload: step %s, %g calls/s", st.Name, st.Rate)
	d.at = now.Add(st.Dur)
	d.next++
}

// ovMark is the moment a step began, with the counters then.
type ovMark struct {
	step int
	at   time.Time
	c    counters
}

// OverloadReport is the overload scenario's result (docs/loadtest.md).
type OverloadReport struct {
	Mix     []mixEntry     `json:"mix"`
	SettleS float64        `json:"settle_s"`
	Steps   []OverloadStep `json:"steps"`
}

// OverloadStep is one rate step.
type OverloadStep struct {
	Name    string                  `json:"name"`
	FromS   float64                 `json:"from_s"` // since the leg's start
	ToS     float64                 `json:"to_s"`
	Rate    float64                 `json:"rate"` // configured calls/s
	Methods map[string]*MethodStats `json:"methods"`
	// For a step whose rate is below its predecessor's (recovery):
	// ShedStoppedS is the time from the step's start to the end of the last
	// one-second sample in which a call of any method was shed (0: none
	// was); after it nothing was shed for the rest of the step.
	ShedStoppedS *float64 `json:"shed_stopped_after_s,omitempty"`
	// P99RecoveredS: the same for the last second in which some method's
	// p99 was over twice its p99 in the first step.
	P99RecoveredS *float64 `json:"p99_recovered_after_s,omitempty"`
}

// MethodStats is one method in one step.
type MethodStats struct {
	SentPerS     float64 `json:"sent_per_s"`
	AdmittedPerS float64 `json:"admitted_per_s"` // answered with code 0 (or another non-busy code)
	OKPerS       float64 `json:"ok_per_s"`
	ShedPerS     float64 `json:"shed_per_s"` // code 2002
	ShedFrac     float64 `json:"shed_frac"`  // shed / answered
	Errors       int64   `json:"errors"`     // other codes
	Timeouts     int64   `json:"timeouts"`   // no answer within --timeout
	P50          float64 `json:"p50_ms"`     // of admitted calls answered with code 0, whole step
	P99          float64 `json:"p99_ms"`
	SettledP50   float64 `json:"settled_p50_ms"` // after --settle
	SettledP99   float64 `json:"settled_p99_ms"`
	// Users: users with at least 3 settled seconds with calls of this method.
	Users         int64   `json:"users"`
	UsersServed   int64   `json:"users_served"` // every such second: all calls admitted
	UsersShed     int64   `json:"users_shed"`   // every such second: all calls shed
	UsersMixed    int64   `json:"users_mixed"`
	ServedFrac    float64 `json:"users_served_frac"`
	ConsistentFrc float64 `json:"users_consistent_frac"` // (served + shed) / users
	// RandomServed: the fraction of users that would have been always
	// served if the same share of calls had been shed at random
	// ((1-shed_frac)^calls per user, at the mean calls per user).
	RandomServed float64 `json:"random_served_frac"`
	CallsPerUser float64 `json:"calls_per_user"`
}

// overloadSample adds the per-method figures of one second.
func (l *leg) overloadSample(s *Sample, c counters, iv map[string]*hdr.Histogram, dt float64) {
	if len(l.cfg.Mix) == 0 || !l.hasScenario("overload") {
		return
	}
	s.Methods = map[string]MethodSample{}
	for _, m := range l.cfg.Mix {
		p := "ov:" + m.Method + ":"
		ms := MethodSample{
			OKPerS:   float64(c[p+"ok"]-l.prevC[p+"ok"]) / dt,
			ShedPerS: float64(c[p+"shed"]-l.prevC[p+"shed"]) / dt,
		}
		if h := iv["ov:"+m.Method]; h != nil {
			ms.P50, ms.P99 = pctOf(h).P50, pctOf(h).P99
		}
		s.Methods[m.Method] = ms
	}
	// Per-step histograms: whole step and settled.
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ovMarks) == 0 {
		return
	}
	mk := l.ovMarks[len(l.ovMarks)-1]
	settled := time.Since(mk.at) >= l.cfg.Settle+time.Second
	for _, m := range l.cfg.Mix {
		h := iv["ov:"+m.Method]
		if h == nil {
			continue
		}
		for _, key := range []string{fmt.Sprintf("%d:%s", mk.step, m.Method), fmt.Sprintf("%d:%s:settled", mk.step, m.Method)} {
			if strings.HasSuffix(key, ":settled") && !settled {
				continue
			}
			if l.ovHists[key] == nil {
				l.ovHists[key] = newHist()
			}
			l.ovHists[key].Merge(h)
		}
	}
}

func (l *leg) hasScenario(n string) bool {
	for _, s := range l.cfg.Scenarios {
		if s == n {
			return true
		}
	}
	return false
}

// overloadReport builds the per-step figures from the step marks, the
// final counters and the per-second series.
func (l *leg) overloadReport(c counters) *OverloadReport {
	if !l.hasScenario("overload") || len(l.ovMarks) == 0 {
		return nil
	}
	r := &OverloadReport{Mix: l.cfg.Mix, SettleS: l.cfg.Settle.Seconds()}
	for k, mk := range l.ovMarks {
		end, endC := l.steadyEnd, c
		if k+1 < len(l.ovMarks) {
			end, endC = l.ovMarks[k+1].at, l.ovMarks[k+1].c
		}
		st := OverloadStep{Name: l.cfg.Steps[mk.step].Name, Rate: l.cfg.Steps[mk.step].Rate,
			FromS: mk.at.Sub(l.start).Seconds(), ToS: end.Sub(l.start).Seconds(), Methods: map[string]*MethodStats{}}
		win := end.Sub(mk.at).Seconds()
		if win <= 0 {
			continue
		}
		for _, m := range l.cfg.Mix {
			p := "ov:" + m.Method + ":"
			d := func(k string) int64 { return endC[p+k] - mk.c[p+k] }
			ms := &MethodStats{SentPerS: float64(d("sent")) / win, OKPerS: float64(d("ok")) / win,
				AdmittedPerS: float64(d("ok")+d("err")) / win, ShedPerS: float64(d("shed")) / win,
				Errors: d("err"), Timeouts: d("timeout")}
			if ans := d("ok") + d("err") + d("shed"); ans > 0 {
				ms.ShedFrac = round3(float64(d("shed")) / float64(ans))
			}
			whole, settled := l.ovHists[fmt.Sprintf("%d:%s", mk.step, m.Method)], l.ovHists[fmt.Sprintf("%d:%s:settled", mk.step, m.Method)]
			ms.P50, ms.P99 = pctOf(whole).P50, pctOf(whole).P99
			ms.SettledP50, ms.SettledP99 = pctOf(settled).P50, pctOf(settled).P99
			u := "ovu:" + strconv.Itoa(mk.step) + ":" + m.Method + ":"
			ms.Users, ms.UsersServed, ms.UsersShed, ms.UsersMixed = c[u+"users"], c[u+"served"], c[u+"shed"], c[u+"mixed"]
			if ms.Users > 0 {
				ms.ServedFrac = round3(float64(ms.UsersServed) / float64(ms.Users))
				ms.ConsistentFrc = round3(float64(ms.UsersServed+ms.UsersShed) / float64(ms.Users))
				ms.CallsPerUser = math.Round(float64(c[u+"calls"])/float64(ms.Users)*10) / 10
				ms.RandomServed = round3(math.Pow(1-ms.ShedFrac, ms.CallsPerUser))
			}
			st.Methods[m.Method] = ms
		}
		r.Steps = append(r.Steps, st)
	}
	// Recovery: a step slower than the one before it.
	for k := 1; k < len(r.Steps); k++ {
		st := &r.Steps[k]
		if st.Rate >= r.Steps[k-1].Rate {
			continue
		}
		lastShed, lastSlow := -1.0, -1.0
		seen := false
		for _, s := range l.series {
			if s.T < st.FromS || s.T > st.ToS {
				continue
			}
			seen = true
			for name, ms := range s.Methods {
				if ms.ShedPerS > 0 && s.T > lastShed {
					lastShed = s.T
				}
				if base := r.Steps[0].Methods[name]; base != nil && base.P99 > 0 && ms.P99 > 2*base.P99 && s.T > lastSlow {
					lastSlow = s.T
				}
			}
		}
		if !seen {
			continue
		}
		shed, slow := 0.0, 0.0
		if lastShed >= 0 {
			shed = math.Round((lastShed-st.FromS)*10) / 10
		}
		if lastSlow >= 0 {
			slow = math.Round((lastSlow-st.FromS)*10) / 10
		}
		st.ShedStoppedS, st.P99RecoveredS = &shed, &slow
	}
	return r
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// MethodSample is one method's second in the series.
type MethodSample struct {
	OKPerS   float64 `json:"ok_per_s"`
	ShedPerS float64 `json:"shed_per_s"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
}
