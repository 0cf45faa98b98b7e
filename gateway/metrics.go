package gateway

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/longlink/longlink/admission"
	"github.com/longlink/longlink/codec"
)

// metrics are the gateway's Prometheus series. Hot-path series are resolved
// once (per command, per reason) so recording is an atomic add.
type metrics struct {
	reg *prometheus.Registry

	conns         prometheus.Gauge
	sessions      prometheus.Gauge
	accepts       prometheus.Counter
	framesIn      [256]prometheus.Counter
	closes        *prometheus.CounterVec
	auths         *prometheus.CounterVec
	authOK        prometheus.Counter // pre-resolved: the common cases on the loop
	authMalformed prometheus.Counter

	calls        *prometheus.CounterVec // method, code
	finalSysFail *prometheus.CounterVec // method
	queueTime    *prometheus.HistogramVec
	backendTime  *prometheus.HistogramVec
	shed         *prometheus.CounterVec // reason
	evictions    *prometheus.CounterVec // reason
	wsUpgrades   *prometheus.CounterVec // result
	httpCalls    *prometheus.CounterVec // status
	admLevel     prometheus.Gauge
	admOverload  prometheus.Gauge
	admShed      *prometheus.CounterVec // business priority
	connRefused  *prometheus.CounterVec // reason
	degrade      prometheus.Gauge
	policy       *prometheus.GaugeVec // network, field

	mu      sync.Mutex
	methods map[string]*methodMetrics // by label, "other" included
	other   *methodMetrics

	all []prometheus.Collector // everything registered above (tests list their names)
}

// methodMetrics are the pre-resolved series of one metrics label: a method
// name, or "other" shared by every method without a label of its own. The
// label is for the metrics only: what a call does never depends on it.
type methodMetrics struct {
	label        string
	queue        prometheus.Observer
	backend      prometheus.Observer
	finalSysFail prometheus.Counter
}

// Metric cardinality bounds: at most maxMethodLabels method labels per
// process (the rest share "other"), and only methods that pass validMethod
// (at most MaxMethodLen bytes of UTF-8) are ever candidates.
const (
	maxMethodLabels = 256
	otherLabel      = "other"
)

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), methods: map[string]*methodMetrics{}}
	f := func(c prometheus.Collector) {
		m.reg.MustRegister(c)
		m.all = append(m.all, c)
	}
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f(collectors.NewGoCollector())
	f(rssAnonCollector())
	m.conns = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_connections", Help: "Open client connections (authenticated or not)."})
	m.sessions = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_sessions", Help: "Authenticated client connections."})
	m.accepts = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_accepts_total", Help: "Accepted TCP connections."})
	frames := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_frames_in_total", Help: "Inbound frames by command."}, []string{"cmd"})
	for i := range m.framesIn {
		m.framesIn[i] = frames.WithLabelValues(codec.Cmd(i).String())
	}
	m.closes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_closes_total", Help: "Closed connections by reason (client, or the close code's name)."}, []string{"reason"})
	m.auths = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_auth_total", Help: "AUTH attempts by result."}, []string{"result"})
	m.authOK = m.auths.WithLabelValues("ok")
	m.authMalformed = m.auths.WithLabelValues("malformed")
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_calls_total", Help: "Forwarded calls by method and result code."}, []string{"method", "code"})
	m.finalSysFail = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_final_system_failures_total", Help: "Calls that still failed with a system error after retries."}, []string{"method"})
	buckets := []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	m.queueTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "longlink_call_queue_seconds", Help: "Time a call waited for a forwarding goroutine (the overload signal).", Buckets: buckets}, []string{"method"})
	m.backendTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "longlink_call_backend_seconds", Help: "Time the backend took to answer, including retries.", Buckets: buckets}, []string{"method"})
	m.shed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_calls_shed_total", Help: "Calls refused before reaching the backend, by reason."}, []string{"reason"})
	m.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_evictions_total", Help: "Connections closed by the idle-deadline wheel, by reason (stale, auth_timeout)."}, []string{"reason"})
	m.policy = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "longlink_heartbeat_policy_seconds", Help: "Heartbeat policy in force, by network and field (min, max, step, idle)."}, []string{"network", "field"})
	m.wsUpgrades = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_websocket_upgrades_total", Help: "WebSocket upgrade attempts on the client port, by result."}, []string{"result"})
	m.httpCalls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_http_calls_total", Help: "Short-connection HTTP calls by HTTP status."}, []string{"status"})
	m.admLevel = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_admission_level", Help: "Admission threshold: calls with compound priority level (business<<7 | user) above it are shed; 8191 admits everything."})
	m.admOverload = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_admission_overloaded", Help: "1 if the last window's average queueing time was over the target."})
	m.admShed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_admission_shed_total", Help: "Calls shed by admission control, by business priority (0 = most important)."}, []string{"priority"})
	m.admLevel.Set(admission.MaxLevel)
	m.connRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_connections_refused_total", Help: "Connections refused by connection admission, by reason (accept_limit, flapping, proxy_protocol)."}, []string{"reason"})
	m.degrade = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_degrade_level", Help: "Degrade level in force (0 normal .. 3)."})
	for _, c := range []prometheus.Collector{m.degrade, m.connRefused, m.admLevel, m.admOverload, m.admShed, m.httpCalls, m.wsUpgrades, m.evictions, m.policy, m.conns, m.sessions, m.accepts, frames, m.closes, m.auths, m.calls, m.finalSysFail, m.queueTime, m.backendTime, m.shed} {
		f(c)
	}
	m.other = m.newSeries(otherLabel)
	m.methods[otherLabel] = m.other
	m.initSeries() // labelled series at 0 from start-up (metrics_init.go)
	return m
}

// methodSeries returns the series for label, creating them if fewer than
// maxMethodLabels labels exist; otherwise the shared "other" series. With
// create false it only finds existing series ("other" when there are none).
// Goroutine-safe.
func (m *metrics) methodSeries(label string, create bool) *methodMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mm, ok := m.methods[label]; ok {
		return mm
	}
	if !create || len(m.methods) >= maxMethodLabels+1 { // +1: "other" itself
		return m.other
	}
	mm := m.newSeries(label)
	m.methods[label] = mm
	return mm
}

func (m *metrics) newSeries(label string) *methodMetrics {
	return &methodMetrics{
		label:        label,
		queue:        m.queueTime.WithLabelValues(label),
		backend:      m.backendTime.WithLabelValues(label),
		finalSysFail: m.finalSysFail.WithLabelValues(label),
	}
}

// sessionsValue reads the sessions gauge (tests and benchmarks).
func (m *metrics) sessionsValue() float64 {
	var d dto.Metric
	_ = m.sessions.Write(&d)
	return d.GetGauge().GetValue()
}
