package push_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/longlink/longlink/push"
)

// The router's labelled series exist at 0 from start-up, so dashboards show
// 0 instead of "No data" and rate() has a starting point.
func TestRouterSeriesAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", Logger: quiet, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{ // family → series at least
		"longlink_push_requests_total":          6, // notify/multicast/broadcast × grpc/nats
		"longlink_push_rejected_total":          3,
		"longlink_push_presence_messages_total": 5,
	}
	for _, f := range fams {
		if n, ok := want[f.GetName()]; ok {
			if len(f.Metric) < n {
				t.Errorf("%s: %d series at start-up, want %d", f.GetName(), len(f.Metric), n)
			}
			for _, m := range f.Metric {
				if v := m.GetCounter().GetValue(); v != 0 {
					t.Errorf("%s %v = %v before traffic", f.GetName(), m.Label, v)
				}
			}
			delete(want, f.GetName())
		}
	}
	for name := range want {
		t.Errorf("%s: not exported before traffic", name)
	}
}
