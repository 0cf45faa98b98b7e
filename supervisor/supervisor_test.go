package supervisor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/longlink/longlink/backend/remote"
)

// series finds one series' value in merged families; labels as "k=v,...".
func series(t *testing.T, fams []*dto.MetricFamily, name, labels string) []float64 {
	t.Helper()
	var out []float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			if strings.Join(ls, ",") != labels {
				continue
			}
			switch {
			case m.Counter != nil:
				out = append(out, m.Counter.GetValue())
			case m.Gauge != nil:
				out = append(out, m.Gauge.GetValue())
			case m.Histogram != nil:
				out = append(out, float64(m.Histogram.GetSampleCount()))
			}
		}
	}
	return out
}

func want1(t *testing.T, fams []*dto.MetricFamily, name, labels string, v float64) {
	t.Helper()
	got := series(t, fams, name, labels)
	if len(got) != 1 || got[0] != v {
		t.Errorf("%s{%s} = %v, want %v", name, labels, got, v)
	}
}

// TestMergeWorkerMetricsRules pins each kind of merge: counters,
// histograms and additive gauges sum; levels, settings and info don't.
func TestMergeWorkerMetricsRules(t *testing.T) {
	worker := func(conns, adm, gcStart float64, build string) string {
		return fmt.Sprintf(`# TYPE longlink_accepts_total counter
longlink_accepts_total 3
# TYPE longlink_call_queue_seconds histogram
longlink_call_queue_seconds_bucket{method="sync",le="0.1"} 2
longlink_call_queue_seconds_bucket{method="sync",le="+Inf"} 2
longlink_call_queue_seconds_sum{method="sync"} 0.1
longlink_call_queue_seconds_count{method="sync"} 2
# TYPE longlink_connections gauge
longlink_connections %v
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1000
# TYPE go_memstats_heap_alloc_bytes gauge
go_memstats_heap_alloc_bytes 10
# TYPE longlink_degrade_level gauge
longlink_degrade_level 2
# TYPE longlink_admission_level gauge
longlink_admission_level %v
# TYPE longlink_heartbeat_policy_seconds gauge
longlink_heartbeat_policy_seconds{field="min",network="cellular"} 210
# TYPE go_gc_gogc_percent gauge
go_gc_gogc_percent 25
# TYPE process_max_fds gauge
process_max_fds 20000
# TYPE go_info gauge
go_info{version="go1.26.8"} 1
# TYPE longlink_build_info gauge
longlink_build_info{version="%s"} 1
# TYPE process_start_time_seconds gauge
process_start_time_seconds %v
# TYPE longlink_new_thing gauge
longlink_new_thing %v
`, conns, adm, build, gcStart, conns)
	}
	fams, err := MergeWorkerMetrics([]io.Reader{
		strings.NewReader(worker(10, 8191, 100, "v1")),
		nil, // worker 1 did not answer
		strings.NewReader(worker(5, 300, 90, "v2")),
	})
	if err != nil {
		t.Fatal(err)
	}
	// counters, histograms, additive gauges: sum
	want1(t, fams, "longlink_accepts_total", "", 6)
	want1(t, fams, "longlink_call_queue_seconds", "method=sync", 4)
	want1(t, fams, "longlink_connections", "", 15)
	want1(t, fams, "process_resident_memory_bytes", "", 2000)
	want1(t, fams, "go_memstats_heap_alloc_bytes", "", 20)
	// levels and settings: the value in force, not a multiple of it
	want1(t, fams, "longlink_degrade_level", "", 2)
	want1(t, fams, "longlink_admission_level", "", 300) // the strictest worker
	want1(t, fams, "longlink_heartbeat_policy_seconds", "field=min,network=cellular", 210)
	want1(t, fams, "go_gc_gogc_percent", "", 25)
	want1(t, fams, "process_max_fds", "", 20000)
	// info: 1 per distinct label set
	want1(t, fams, "go_info", "version=go1.26.8", 1)
	want1(t, fams, "longlink_build_info", "version=v1", 1)
	want1(t, fams, "longlink_build_info", "version=v2", 1)
	// start times: the earliest
	want1(t, fams, "process_start_time_seconds", "", 90)
	// unclassified gauges: per worker, never summed
	want1(t, fams, "longlink_new_thing", "worker=0", 10)
	want1(t, fams, "longlink_new_thing", "worker=2", 5)
	if got := series(t, fams, "longlink_new_thing", ""); len(got) != 0 {
		t.Errorf("an unclassified gauge was merged: %v", got)
	}
}

// TestEveryWorkerGaugeIsClassified: every gauge a worker exports has an
// explicit merge rule. A new gauge fails here until it is added to
// gaugeRules (sum if each process holds its own share, max/min if it is a
// level or setting), so the supervisor never sums a level by mistake.
func TestEveryWorkerGaugeIsClassified(t *testing.T) {
	s := startServer(t, nil)
	fams := gather(t, s)
	c, err := remote.NewClient(remote.Config{Addrs: []string{"127.0.0.1:1"}, Auth: remote.ClientAuth{Secret: "0123456789abcdef0123"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Collectors()...)
	more, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range append(fams, more...) {
		if t0 := f.GetType(); t0 != dto.MetricType_GAUGE && t0 != dto.MetricType_UNTYPED {
			continue
		}
		n++
		if _, ok := gaugeRule(f.GetName()); !ok {
			t.Errorf("gauge %s has no merge rule: add it to gaugeRules in supervisor/supervisor.go", f.GetName())
		}
	}
	if n < 20 {
		t.Fatalf("only %d gauges gathered", n)
	}
}

// TestSupervisorMetricsTwoWorkers: the supervisor's /metrics over two real
// workers at degrade 2 reports degrade 2, one admission level and one
// heartbeat policy, and the sum of their connections.
func TestSupervisorMetricsTwoWorkers(t *testing.T) {
	sv, servers := twoWorkerSupervisor(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	for i, n := range []int{1, 2} { // connections: 1 on worker 0, 2 on worker 1
		for range n {
			c, err := d.DialContext(ctx, "tcp", servers[i].Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
	}
	h := sv.handler()
	scrape := func() []*dto.MetricFamily {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		var p expfmt.TextParser
		m, err := p.TextToMetricFamilies(rec.Body)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]*dto.MetricFamily, 0, len(m))
		for _, f := range m {
			out = append(out, f)
		}
		return out
	}
	var fams []*dto.MetricFamily
	for {
		fams = scrape()
		if v := series(t, fams, "longlink_connections", ""); len(v) == 1 && v[0] == 3 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("longlink_connections = %v, want 3", series(t, fams, "longlink_connections", ""))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// One worker's own values, to compare the host's with.
	own := gather(t, servers[0])
	one := func(name, labels string) float64 {
		v := series(t, own, name, labels)
		if len(v) != 1 {
			t.Fatalf("worker's own %s{%s}: %v", name, labels, v)
		}
		return v[0]
	}
	want1(t, fams, "longlink_degrade_level", "", 2)
	want1(t, fams, "longlink_admission_level", "", one("longlink_admission_level", ""))
	want1(t, fams, "longlink_heartbeat_policy_seconds", "field=min,network=cellular", one("longlink_heartbeat_policy_seconds", "field=min,network=cellular"))
	want1(t, fams, "go_gc_gogc_percent", "", one("go_gc_gogc_percent", ""))
	want1(t, fams, "process_max_fds", "", one("process_max_fds", ""))
	want1(t, fams, "longlink_workers", "", 2)
	if v := series(t, fams, "go_info", own0(t, own, "go_info")); len(v) != 1 || v[0] != 1 {
		t.Errorf("go_info = %v, want 1", v)
	}
}

// own0 returns the label string of a family's first series.
func own0(t *testing.T, fams []*dto.MetricFamily, name string) string {
	t.Helper()
	for _, f := range fams {
		if f.GetName() == name && len(f.Metric) > 0 {
			var ls []string
			for _, l := range f.Metric[0].Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			return strings.Join(ls, ",")
		}
	}
	t.Fatalf("no %s", name)
	return ""
}

// TestSupervisorMetricsNamesForDashboard pins what the dashboard test in
// package gateway assumes of the supervisor (it cannot import this
// package): the merged /metrics names only the workers' series and
// longlink_workers{,_configured}, and ProcessCollector's series are
// longlink_supervisor_process_*.
func TestSupervisorMetricsNamesForDashboard(t *testing.T) {
	sv, servers := twoWorkerSupervisor(t)
	workers := map[string]bool{"longlink_workers": true, "longlink_workers_configured": true}
	for _, s := range servers {
		for _, f := range gather(t, s) {
			workers[f.GetName()] = true
		}
	}
	rec := httptest.NewRecorder()
	sv.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	for n := range fams {
		if !workers[n] {
			t.Errorf("the supervisor's /metrics has %s, which no worker exports", n)
		}
	}
	for _, n := range []string{"longlink_workers", "longlink_workers_configured", "longlink_connections"} {
		if fams[n] == nil {
			t.Errorf("the supervisor's /metrics lacks %s", n)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(ProcessCollector())
	own, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(own) == 0 {
		t.Fatal("ProcessCollector gathered nothing")
	}
	for _, f := range own {
		if !strings.HasPrefix(f.GetName(), "longlink_supervisor_process_") {
			t.Errorf("ProcessCollector exports %s", f.GetName())
		}
	}
}
