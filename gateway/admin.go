package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/internal/buildinfo"
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
	// Series: the last minutes, one point a second, oldest first.
	Series StatusSeries `json:"series"`
}

// StatusSeries are the /status page's live curves.
type StatusSeries struct {
	Conns     []float64 `json:"conns"`
	CallsPerS []float64 `json:"calls_per_s"`
	QueueMS   []float64 `json:"queue_ms"` // average queueing time
	ShedPerS  []float64 `json:"shed_per_s"`
}

// add sums o into s point by point, aligned at the newest point.
func (s *StatusSeries) add(o StatusSeries) {
	sum := func(a, b []float64, avg bool) []float64 {
		if len(b) > len(a) {
			a, b = b, a
		}
		out := append([]float64(nil), a...)
		off := len(a) - len(b)
		for i, v := range b {
			if avg {
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
}

const seriesLen = 300 // five minutes

// counters read by the status page (Prometheus series aren't cheap to read).
type statusCounters struct {
	calls, errors, shed atomic.Uint64
	queueNs, queueN     atomic.Int64

	mu                    sync.Mutex
	lastAt                time.Time
	lastCalls, lastErrors uint64
	lastShed              uint64
	callRate, errRate     float64
	series                StatusSeries
}

// sample updates the per-second rates; called once a second.
func (sc *statusCounters) sample(now time.Time, conns int) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	c, e, sh := sc.calls.Load(), sc.errors.Load(), sc.shed.Load()
	qn, qs := sc.queueN.Swap(0), sc.queueNs.Swap(0)
	if !sc.lastAt.IsZero() {
		dt := now.Sub(sc.lastAt).Seconds()
		sc.callRate, sc.errRate = float64(c-sc.lastCalls)/dt, float64(e-sc.lastErrors)/dt
		q := 0.0
		if qn > 0 {
			q = float64(qs) / float64(qn) / 1e6
		}
		push := func(xs []float64, v float64) []float64 {
			if len(xs) >= seriesLen {
				xs = append(xs[:0], xs[1:]...)
			}
			return append(xs, v)
		}
		sc.series.Conns = push(sc.series.Conns, float64(conns))
		sc.series.CallsPerS = push(sc.series.CallsPerS, sc.callRate)
		sc.series.QueueMS = push(sc.series.QueueMS, q)
		sc.series.ShedPerS = push(sc.series.ShedPerS, float64(sh-sc.lastShed)/dt)
	}
	sc.lastAt, sc.lastCalls, sc.lastErrors, sc.lastShed = now, c, e, sh
}

// Status returns the current summary. Goroutine-safe.
func (s *Server) Status() Status {
	sc := &s.fwd.stats
	sc.mu.Lock()
	cr, er := sc.callRate, sc.errRate
	series := StatusSeries{
		Conns: slices.Clone(sc.series.Conns), CallsPerS: slices.Clone(sc.series.CallsPerS),
		QueueMS: slices.Clone(sc.series.QueueMS), ShedPerS: slices.Clone(sc.series.ShedPerS),
	}
	sc.mu.Unlock()
	return Status{
		Node: s.cfg.Node, Version: buildinfo.Version, UptimeS: time.Since(s.started).Seconds(),
		Connections: s.ConnCount(), Users: s.SessionUsers(),
		Calls: sc.calls.Load(), CallErrors: sc.errors.Load(), CallsPerS: cr, ErrorsPerS: er,
		Draining: s.draining.Load(), Degrade: s.DegradeLevel(), Series: series,
	}
}

// AdminHandler serves /metrics, /healthz and /status for this worker.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { writeStatus(w, r, s.Status()) })
	mux.HandleFunc("/heartbeat/policy", s.handlePolicy)
	mux.HandleFunc("/switches", s.handleSwitches)
	mux.HandleFunc("/keys/reload", s.handleKeysReload)
	mux.HandleFunc("/debug/pprof/", pprof.Index) // profiles, behind the admin token
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.shakeRoutes(mux)
	return s.requireToken(mux)
}

// ready is nil when this process should take traffic, else why not.
func (s *Server) ready() error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	if s.push != nil && s.push.node != nil {
		if err := s.push.node.Ready(); err != nil {
			return err
		}
	}
	if s.cfg.Ready != nil {
		return s.cfg.Ready()
	}
	return nil
}

func writeStatus(w http.ResponseWriter, r *http.Request, st Status) {
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusPage.Execute(w, st)
}

// sparkline renders a series as an inline SVG polyline (no scripts, no CDN).
func sparkline(xs []float64) template.HTML {
	const w, h = 600.0, 60.0
	if len(xs) < 2 {
		return template.HTML(`<svg width="600" height="60"><text x="4" y="34" fill="#999">collecting…</text></svg>`)
	}
	hi := 0.0
	for _, x := range xs {
		hi = max(hi, x)
	}
	if hi == 0 {
		hi = 1
	}
	var b strings.Builder
	for i, x := range xs {
		fmt.Fprintf(&b, "%.1f,%.1f ", float64(i)*w/float64(seriesLen-1), h-2-(h-4)*x/hi)
	}
	return template.HTML(fmt.Sprintf(`<svg width="600" height="60" style="background:#fafafa"><polyline fill="none" stroke="#2a6" stroke-width="1.5" points="%s"/><text x="4" y="12" font-size="11" fill="#555">max %.4g</text></svg>`, b.String(), hi))
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"dur":   func(s float64) string { return (time.Duration(s) * time.Second).String() },
	"spark": sparkline,
}).Parse(`<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>longlink {{.Node}}</title><style>body{font:14px system-ui,sans-serif;margin:2em}td{padding:.2em 1em}td:first-child{color:#666}</style></head>
<body><h1>longlink gateway</h1><table>
<tr><td>node</td><td>{{.Node}}{{if .Workers}} ({{.Workers}} workers){{end}}</td></tr>
<tr><td>version</td><td>{{.Version}}</td></tr>
<tr><td>uptime</td><td>{{dur .UptimeS}}</td></tr>
<tr><td>connections</td><td>{{.Connections}}</td></tr>
<tr><td>users online</td><td>{{.Users}}</td></tr>
<tr><td>calls/s</td><td>{{printf "%.1f" .CallsPerS}}</td></tr>
<tr><td>call errors/s</td><td>{{printf "%.1f" .ErrorsPerS}}</td></tr>
<tr><td>calls (total)</td><td>{{.Calls}} ({{.CallErrors}} errors)</td></tr>
<tr><td>state</td><td>{{if .Draining}}draining{{else}}serving{{end}}{{if .Degrade}}, degrade level {{.Degrade}}{{end}}</td></tr>
</table>
<h2>Last five minutes</h2><table>
<tr><td>connections</td><td>{{spark .Series.Conns}}</td></tr>
<tr><td>calls/s</td><td>{{spark .Series.CallsPerS}}</td></tr>
<tr><td>queueing time (ms)</td><td>{{spark .Series.QueueMS}}</td></tr>
<tr><td>shed calls/s</td><td>{{spark .Series.ShedPerS}}</td></tr>
</table><p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/status?format=json">json</a></p></body></html>`))

// listenAdmin listens on host:port, or on a unix socket given as unix:/path.
func listenAdmin(addr string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		_ = os.Remove(p)
		return net.Listen("unix", p)
	}
	return net.Listen("tcp", addr)
}

// ServeAdmin starts the admin HTTP listener in the background and returns
// its bound address.
func (s *Server) ServeAdmin(addr string) (string, error) {
	ln, err := listenAdmin(addr)
	if err != nil {
		return "", fmt.Errorf("gateway: admin listen %s: %w", addr, err)
	}
	s.admin = &http.Server{Handler: s.AdminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.admin.Serve(ln) }()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				s.fwd.stats.sample(now, s.ConnCount())
			case <-s.done:
				return
			}
		}
	}()
	s.adminAddr = ln.Addr().String()
	return s.adminAddr, nil
}

// policyJSON is the admin API's form of heartbeat.Policies: durations as
// Go duration strings ("210s", "9m40s").
type policyJSON struct {
	Min  string `json:"min"`
	Max  string `json:"max"`
	Step string `json:"step"`
	Idle string `json:"idle"`
}

type policiesJSON struct {
	Unknown  policyJSON `json:"unknown"`
	WiFi     policyJSON `json:"wifi"`
	Cellular policyJSON `json:"cellular"`
}

func toPolicyJSON(p heartbeat.Policy) policyJSON {
	return policyJSON{Min: p.Min.String(), Max: p.Max.String(), Step: p.Step.String(), Idle: p.Idle.String()}
}

func toPoliciesJSON(ps heartbeat.Policies) policiesJSON {
	return policiesJSON{Unknown: toPolicyJSON(ps.Unknown), WiFi: toPolicyJSON(ps.WiFi), Cellular: toPolicyJSON(ps.Cellular)}
}

func (pj policiesJSON) policies() (heartbeat.Policies, error) {
	var ps heartbeat.Policies
	var err error
	for _, f := range []struct {
		j policyJSON
		p *heartbeat.Policy
	}{{pj.Unknown, &ps.Unknown}, {pj.WiFi, &ps.WiFi}, {pj.Cellular, &ps.Cellular}} {
		if *f.p, err = f.j.policy(); err != nil {
			return ps, fmt.Errorf("bad duration: %w", err)
		}
	}
	return ps, nil
}

func (pj policyJSON) policy() (heartbeat.Policy, error) {
	var p heartbeat.Policy
	for _, f := range []struct {
		s string
		d *time.Duration
	}{{pj.Min, &p.Min}, {pj.Max, &p.Max}, {pj.Step, &p.Step}, {pj.Idle, &p.Idle}} {
		d, err := time.ParseDuration(f.s)
		if err != nil {
			return p, err
		}
		*f.d = d
	}
	return p, nil
}

// handlePolicy serves GET (the policies in force) and PUT (replace them,
// then push POLICY frames to every connected client) on /heartbeat/policy.
// PUT takes either full policies or {"scale": 2} to multiply the current ones.
func (s *Server) handlePolicy(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodPut, http.MethodPost:
		var req struct {
			policiesJSON
			Scale float64 `json:"scale"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "bad policy JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		var ps heartbeat.Policies
		if req.Scale > 0 {
			ps = s.basePolicies().Scale(req.Scale)
		} else {
			var err error
			if ps, err = req.policies(); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		if err := s.SetHeartbeatPolicies(ps); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	default:
		http.Error(w, "GET or PUT", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(toPoliciesJSON(s.HeartbeatPolicies()))
}
