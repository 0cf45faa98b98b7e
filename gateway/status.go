package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/internal/buildinfo"
	"github.com/longlink/longlink/push"
)

// Status is the summary served at /status (HTML, or JSON with ?format=json).
type Status struct {
	Node        string  `json:"node"`
	Version     string  `json:"version"`
	UptimeS     float64 `json:"uptime_s"`
	Connections int     `json:"connections"`
	Users       int     `json:"users"`
	Calls       uint64  `json:"calls_total"`
	CallErrors  uint64  `json:"call_errors_total"`
	CallsPerS   float64 `json:"calls_per_s"`
	ErrorsPerS  float64 `json:"call_errors_per_s"`
	Draining    bool    `json:"draining"`
	Workers     int     `json:"workers,omitempty"`
	Degrade     int     `json:"degrade_level"`
	// Ready is "" when this process takes traffic, else why not (/readyz).
	Ready string `json:"ready"`
	// The last second's process figures (the supervisor: summed over the host).
	RSSBytes       float64 `json:"rss_bytes"`
	AnonBytes      float64 `json:"rss_anon_bytes"`
	CPUPercent     float64 `json:"cpu_percent"` // of one core
	PushPerS       float64 `json:"push_delivered_per_s"`
	HeartbeatsPerS float64 `json:"heartbeats_per_s"`
	// Links: NATS, logic instances, the push hub, the shake ledger.
	Links []Link `json:"links"`
	// Switches in force (nil from a supervisor no worker answered).
	Switches *Switches `json:"switches,omitempty"`
	// Audit: the last audit log lines, oldest first.
	Audit []AuditLine `json:"audit"`
	// WorkerRows: one per configured worker, under --workers.
	WorkerRows []WorkerRow `json:"worker_rows,omitempty"`
	// Series: the last minutes, one point a second, oldest first.
	Series StatusSeries `json:"series"`
}

// Link is the state of one connection this process depends on.
type Link struct {
	Name string `json:"name"` // "nats", "logic", "push hub", "shake ledger"
	Addr string `json:"addr"` // without credentials
	Up   bool   `json:"up"`
	Err  string `json:"err,omitempty"` // why not up
}

// LinkCheck adds a link to /status: Check is nil while it is up, else the
// reason. It is asked only when the page is served.
type LinkCheck struct {
	Name, Addr string
	Check      func() error
}

// Link asks Check (if any) and returns the link's row for /status.
func (lc LinkCheck) Link() Link {
	l := Link{Name: lc.Name, Addr: lc.Addr, Up: true}
	if lc.Check != nil {
		if err := lc.Check(); err != nil {
			l.Up, l.Err = false, err.Error()
		}
	}
	return l
}

// WorkerRow is one worker's line on the supervisor's /status.
type WorkerRow struct {
	Index       int     `json:"index"`
	Up          bool    `json:"up"` // answered /status
	Node        string  `json:"node,omitempty"`
	Ready       string  `json:"ready"`
	Draining    bool    `json:"draining"`
	Degrade     int     `json:"degrade_level"`
	Connections int     `json:"connections"`
	CallsPerS   float64 `json:"calls_per_s"`
	PushPerS    float64 `json:"push_delivered_per_s"`
	RSSBytes    float64 `json:"rss_bytes"`
	AnonBytes   float64 `json:"rss_anon_bytes"`
	CPUPercent  float64 `json:"cpu_percent"`
	UptimeS     float64 `json:"uptime_s"`
}

// StatusSeries are the /status page's live curves.
type StatusSeries struct {
	Conns      []float64 `json:"conns"`
	CallsPerS  []float64 `json:"calls_per_s"`
	QueueMS    []float64 `json:"queue_ms"` // average queueing time
	ShedPerS   []float64 `json:"shed_per_s"`
	RSS        []float64 `json:"rss_bytes"`
	Anon       []float64 `json:"rss_anon_bytes"`
	CPU        []float64 `json:"cpu_percent"`
	PushPerS   []float64 `json:"push_delivered_per_s"`
	Heartbeats []float64 `json:"heartbeats_per_s"`
}

// Add sums o into s point by point, aligned at the newest point (the
// queueing time takes the worst of the two): how the supervisor merges its
// workers' curves.
func (s *StatusSeries) Add(o StatusSeries) {
	sum := func(a, b []float64, worst bool) []float64 {
		if len(b) > len(a) {
			a, b = b, a
		}
		out := append([]float64(nil), a...)
		off := len(a) - len(b)
		for i, v := range b {
			if worst {
				out[off+i] = max(out[off+i], v) // queueing time: the worst worker
			} else {
				out[off+i] += v
			}
		}
		return out
	}
	s.Conns = sum(s.Conns, o.Conns, false)
	s.CallsPerS = sum(s.CallsPerS, o.CallsPerS, false)
	s.QueueMS = sum(s.QueueMS, o.QueueMS, true)
	s.ShedPerS = sum(s.ShedPerS, o.ShedPerS, false)
	s.RSS = sum(s.RSS, o.RSS, false)
	s.Anon = sum(s.Anon, o.Anon, false)
	s.CPU = sum(s.CPU, o.CPU, false)
	s.PushPerS = sum(s.PushPerS, o.PushPerS, false)
	s.Heartbeats = sum(s.Heartbeats, o.Heartbeats, false)
}

// Clone returns a deep copy of s.
func (s *StatusSeries) Clone() StatusSeries {
	return StatusSeries{
		Conns: slices.Clone(s.Conns), CallsPerS: slices.Clone(s.CallsPerS), QueueMS: slices.Clone(s.QueueMS),
		ShedPerS: slices.Clone(s.ShedPerS), RSS: slices.Clone(s.RSS), Anon: slices.Clone(s.Anon),
		CPU: slices.Clone(s.CPU), PushPerS: slices.Clone(s.PushPerS), Heartbeats: slices.Clone(s.Heartbeats),
	}
}

const seriesLen = 300 // five minutes

// PushPoint appends v to a StatusSeries curve, dropping the oldest point once
// the series is full (in place: no allocation once the slice has grown to
// five minutes of points).
func PushPoint(xs []float64, v float64) []float64 {
	if len(xs) >= seriesLen {
		copy(xs, xs[1:])
		xs[len(xs)-1] = v
		return xs
	}
	return append(xs, v)
}

// procUsage is what the kernel says about this process.
type procUsage struct {
	rss, anon float64 // bytes
	cpu       float64 // user+system seconds so far
}

var pageSize = float64(os.Getpagesize())

// readProcUsage reads /proc/self/statm (one small read: resident and shared
// pages; anonymous is their difference, as RssAnon in /proc/self/status) and
// getrusage. Cheap enough for every worker once a second.
func readProcUsage() procUsage {
	var u procUsage
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		u.cpu = float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	}
	f, err := os.Open("/proc/self/statm")
	if err != nil {
		return u
	}
	var buf [128]byte
	n, _ := f.Read(buf[:])
	f.Close()
	fields := strings.Fields(string(buf[:n]))
	if len(fields) >= 3 {
		res, _ := strconv.ParseFloat(fields[1], 64)
		shared, _ := strconv.ParseFloat(fields[2], 64)
		u.rss, u.anon = res*pageSize, (res-shared)*pageSize
	}
	return u
}

// ProcSampler turns successive readings of this process's memory and CPU
// (from /proc/self/statm and getrusage) into rates, for /status. The zero
// value is ready; it is not safe for concurrent use.
type ProcSampler struct {
	last   procUsage
	lastAt time.Time
	cpuPct float64
	cur    procUsage
}

// Sample reads the process's usage at now; ok once a CPU rate is known (from
// the second call on).
func (p *ProcSampler) Sample(now time.Time) (ok bool) {
	u := readProcUsage()
	if !p.lastAt.IsZero() {
		if dt := now.Sub(p.lastAt).Seconds(); dt > 0 {
			p.cpuPct = max(0, (u.cpu-p.last.cpu)/dt*100)
			ok = true
		}
	}
	p.last, p.lastAt, p.cur = u, now, u
	return ok
}

// RSS is the resident memory at the last Sample, in bytes.
func (p *ProcSampler) RSS() float64 { return p.cur.rss }

// Anon is the anonymous resident memory at the last Sample, in bytes.
func (p *ProcSampler) Anon() float64 { return p.cur.anon }

// CPUPercent is the CPU used between the last two Samples, in % of one core.
func (p *ProcSampler) CPUPercent() float64 { return p.cpuPct }

// statusInputs are the running totals read once a second for the page.
type statusInputs struct {
	conns              int
	pushed, heartbeats uint64
}

// counters read by the status page (Prometheus series aren't cheap to read).
type statusCounters struct {
	calls, errors, shed atomic.Uint64
	queueNs, queueN     atomic.Int64

	mu                    sync.Mutex
	lastAt                time.Time
	lastCalls, lastErrors uint64
	lastShed              uint64
	lastPushed, lastHB    uint64
	callRate, errRate     float64
	pushRate, hbRate      float64
	proc                  ProcSampler
	series                StatusSeries
	links                 []LinkCheck // AddLink's
}

// sample updates the per-second rates; called once a second.
func (sc *statusCounters) sample(now time.Time, in statusInputs) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	c, e, sh := sc.calls.Load(), sc.errors.Load(), sc.shed.Load()
	qn, qs := sc.queueN.Swap(0), sc.queueNs.Swap(0)
	procOK := sc.proc.Sample(now)
	if !sc.lastAt.IsZero() {
		dt := now.Sub(sc.lastAt).Seconds()
		sc.callRate, sc.errRate = float64(c-sc.lastCalls)/dt, float64(e-sc.lastErrors)/dt
		sc.pushRate, sc.hbRate = float64(in.pushed-sc.lastPushed)/dt, float64(in.heartbeats-sc.lastHB)/dt
		q := 0.0
		if qn > 0 {
			q = float64(qs) / float64(qn) / 1e6
		}
		ss := &sc.series
		ss.Conns = PushPoint(ss.Conns, float64(in.conns))
		ss.CallsPerS = PushPoint(ss.CallsPerS, sc.callRate)
		ss.QueueMS = PushPoint(ss.QueueMS, q)
		ss.ShedPerS = PushPoint(ss.ShedPerS, float64(sh-sc.lastShed)/dt)
		ss.PushPerS = PushPoint(ss.PushPerS, sc.pushRate)
		ss.Heartbeats = PushPoint(ss.Heartbeats, sc.hbRate)
		if procOK {
			ss.RSS = PushPoint(ss.RSS, sc.proc.cur.rss)
			ss.Anon = PushPoint(ss.Anon, sc.proc.cur.anon)
			ss.CPU = PushPoint(ss.CPU, sc.proc.cpuPct)
		}
	}
	sc.lastAt, sc.lastCalls, sc.lastErrors, sc.lastShed = now, c, e, sh
	sc.lastPushed, sc.lastHB = in.pushed, in.heartbeats
}

// counterValue reads a Prometheus counter (once a second: a small cost).
func counterValue(c interface{ Write(*dto.Metric) error }) uint64 {
	var m dto.Metric
	if c == nil || c.Write(&m) != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}

// sampleStatus takes the once-a-second sample behind /status.
func (s *Server) sampleStatus(now time.Time) {
	in := statusInputs{conns: s.ConnCount(), heartbeats: counterValue(s.metrics.framesIn[codec.CmdHeartbeat])}
	if s.push != nil && s.push.delivered != nil {
		in.pushed = counterValue(s.push.delivered)
	}
	s.fwd.stats.sample(now, in)
}

// AddLink shows one more link (the shake ledger, ...) on /status.
// Goroutine-safe.
func (s *Server) AddLink(lc LinkCheck) {
	sc := &s.fwd.stats
	sc.mu.Lock()
	sc.links = append(sc.links, lc)
	sc.mu.Unlock()
}

// links asks each link for its state: the push node's NATS connection, the
// push hub in this process (Config.Ready), the logic instances (from the
// remote client's instance_up series, when that backend is in use), and
// those added with AddLink.
func (s *Server) links() []Link {
	var out []Link
	if s.push != nil && s.push.node != nil {
		out = append(out, LinkCheck{Name: "nats", Addr: push.RedactURLs(s.cfg.NATS), Check: s.push.node.Ready}.Link())
	} else if s.cfg.NATS == "" {
		out = append(out, Link{Name: "nats", Addr: "", Up: false, Err: "push off"})
	}
	if s.cfg.Ready != nil {
		out = append(out, LinkCheck{Name: "push hub", Addr: "this process", Check: s.cfg.Ready}.Link())
	}
	if inst := s.logicInstances(); len(inst) > 0 {
		out = append(out, inst...)
	} else {
		out = append(out, Link{Name: "logic", Addr: backendName(s.cfg.Backend), Up: true})
	}
	s.fwd.stats.mu.Lock()
	extra := slices.Clone(s.fwd.stats.links)
	s.fwd.stats.mu.Unlock()
	for _, lc := range extra {
		out = append(out, lc.Link())
	}
	return out
}

// logicInstances reads longlink_logic_client_instance_up (registered by the
// grpc:// backend) from this server's registry: the client's own verdict,
// an instance it has ejected is down. Only when /status is served.
func (s *Server) logicInstances() []Link {
	fams, err := s.metrics.reg.Gather()
	if err != nil && len(fams) == 0 {
		return nil
	}
	var out []Link
	for _, f := range fams {
		if f.GetName() != "longlink_logic_client_instance_up" {
			continue
		}
		for _, m := range f.Metric {
			l := Link{Name: "logic", Up: m.GetGauge().GetValue() > 0}
			for _, lp := range m.Label {
				if lp.GetName() == "instance" {
					l.Addr = lp.GetValue()
				}
			}
			if !l.Up {
				l.Err = "ejected: failing or unreachable"
			}
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// backendName names an in-process backend ("in process (embedded)").
func backendName(b any) string {
	n := strings.TrimPrefix(fmt.Sprintf("%T", b), "*")
	return "in process (" + n + ")"
}

// Status returns the current summary. Goroutine-safe.
func (s *Server) Status() Status {
	sc := &s.fwd.stats
	sc.mu.Lock()
	cr, er, pr, hr := sc.callRate, sc.errRate, sc.pushRate, sc.hbRate
	proc, cpu := sc.proc.cur, sc.proc.cpuPct
	series := sc.series.Clone()
	sc.mu.Unlock()
	sw := s.Switches()
	st := Status{
		Node: s.cfg.Node, Version: buildinfo.Version, UptimeS: time.Since(s.started).Seconds(),
		Connections: s.ConnCount(), Users: s.SessionUsers(),
		Calls: sc.calls.Load(), CallErrors: sc.errors.Load(), CallsPerS: cr, ErrorsPerS: er,
		Draining: s.draining.Load(), Degrade: s.DegradeLevel(), Series: series,
		RSSBytes: proc.rss, AnonBytes: proc.anon, CPUPercent: cpu, PushPerS: pr, HeartbeatsPerS: hr,
		Links: s.links(), Switches: &sw, Audit: RecentAudit(),
	}
	if err := s.ready(); err != nil {
		st.Ready = err.Error()
	}
	return st
}

// AuditLine is one audit log line kept for /status.
type AuditLine struct {
	Time time.Time `json:"time"`
	Line string    `json:"line"`           // message and attributes, key=value
	From string    `json:"from,omitempty"` // the worker it came from, on a supervisor
}

// AuditKeep is how many audit lines /status keeps (the supervisor keeps as
// many of its own and its workers' lines merged).
const AuditKeep = 50

// auditRing keeps the process's last audit lines (a process runs one
// gateway, or one supervisor: one ring for it).
var auditRing struct {
	sync.Mutex
	lines []AuditLine
}

// RecentAudit returns this process's last audit lines (see WithAuditRing),
// oldest first.
func RecentAudit() []AuditLine {
	auditRing.Lock()
	defer auditRing.Unlock()
	return append([]AuditLine{}, auditRing.lines...) // [] in JSON, not null
}

// auditHandler passes every record on and keeps those whose message starts
// with "audit:" in the ring. Only audit lines pay for the formatting.
type auditHandler struct {
	slog.Handler
	attrs []slog.Attr // from WithAttrs, in order
}

// withAuditRing wraps h so /status shows recent audit lines (once: a
// handler already wrapped is returned as is).
func withAuditRing(h slog.Handler) slog.Handler {
	if _, ok := h.(*auditHandler); ok {
		return h
	}
	return &auditHandler{Handler: h}
}

// WithAuditRing returns l logging the same, with its audit lines kept for
// /status (the gateway's Config.Logger gets this by itself).
func WithAuditRing(l *slog.Logger) *slog.Logger {
	return slog.New(withAuditRing(l.Handler()))
}

func (a *auditHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "audit:") {
		var b strings.Builder
		b.WriteString(strings.TrimSpace(strings.TrimPrefix(r.Message, "audit:")))
		add := func(at slog.Attr) bool {
			b.WriteByte(' ')
			b.WriteString(at.Key)
			b.WriteByte('=')
			b.WriteString(at.Value.String())
			return true
		}
		for _, at := range a.attrs {
			add(at)
		}
		r.Attrs(add)
		t := r.Time
		if t.IsZero() {
			t = time.Now()
		}
		auditRing.Lock()
		if len(auditRing.lines) >= AuditKeep {
			auditRing.lines = append(auditRing.lines[:0], auditRing.lines[1:]...)
		}
		auditRing.lines = append(auditRing.lines, AuditLine{Time: t, Line: b.String()})
		auditRing.Unlock()
	}
	return a.Handler.Handle(ctx, r)
}

func (a *auditHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &auditHandler{Handler: a.Handler.WithAttrs(as), attrs: append(slices.Clone(a.attrs), as...)}
}

func (a *auditHandler) WithGroup(name string) slog.Handler {
	return &auditHandler{Handler: a.Handler.WithGroup(name), attrs: a.attrs}
}
