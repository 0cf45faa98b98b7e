package gateway

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/prometheus/common/expfmt"
)

// TestFreshMetricsAtZero: before any traffic, /metrics already has the
// labelled series whose label values are known, at 0 (dashboards show 0,
// not "No data").
func TestFreshMetricsAtZero(t *testing.T) {
	s := startServer(t, nil)
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{ // family: label values of its one label
		"longlink_closes_total":              {"client", "io_error", "stale", "auth_timeout", "slow_consumer", "flood", "shutdown", "bad_token", "replaced"},
		"longlink_auth_total":                authResults,
		"longlink_calls_shed_total":          shedReasons,
		"longlink_evictions_total":           evictReasons,
		"longlink_connections_refused_total": refuseReasons,
		"longlink_websocket_upgrades_total":  wsResults,
		"longlink_http_calls_total":          {"200", "429", "503"},
		"longlink_admission_shed_total":      {"0", "1", "2", "3", strconv.Itoa(maxDefaultPriority)},
	}
	for name, values := range want {
		f := fams[name]
		if f == nil {
			t.Errorf("%s: not exported before traffic", name)
			continue
		}
		have := map[string]float64{}
		for _, m := range f.Metric {
			if len(m.Label) == 1 {
				have[m.Label[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
		for _, v := range values {
			if got, ok := have[v]; !ok {
				t.Errorf("%s{%q}: missing at start-up", name, v)
			} else if got != 0 {
				t.Errorf("%s{%q} = %v at start-up, want 0", name, v, got)
			}
		}
	}
}
