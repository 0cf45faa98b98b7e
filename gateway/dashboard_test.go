package gateway

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/longlink/longlink/backend/remote"
)

type dashboard struct {
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Title       string `json:"title"`
		Type        string `json:"type"`
		FieldConfig struct {
			Defaults struct {
				Unit string `json:"unit"`
			} `json:"defaults"`
			Overrides []struct {
				Matcher struct {
					ID      string `json:"id"`
					Options string `json:"options"`
				} `json:"matcher"`
				Properties []struct {
					ID    string `json:"id"`
					Value any    `json:"value"`
				} `json:"properties"`
			} `json:"overrides"`
		} `json:"fieldConfig"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile("../deploy/grafana/longlink.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash dashboard
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	return dash
}

// exportedSeries names every series a longlink host can export: the
// gateway's own (with push and shake), the push router's, the logic
// client's, and the supervisor's (its merged /metrics and its process).
func exportedSeries(t *testing.T) map[string]bool {
	have := map[string]bool{}
	add := func(cs ...prometheus.Collector) {
		descs := make(chan *prometheus.Desc, 1024)
		go func() {
			for _, c := range cs {
				c.Describe(descs)
			}
			close(descs)
		}()
		fq := regexp.MustCompile(`fqName: "([^"]+)"`)
		for d := range descs {
			if m := fq.FindStringSubmatch(d.String()); m != nil {
				have[m[1]], have[m[1]+"_bucket"] = true, true
			}
		}
	}
	gather := func(g prometheus.Gatherer) {
		fams, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			have[f.GetName()], have[f.GetName()+"_bucket"] = true, true
		}
	}
	s, hub, _ := startPush(t, nil) // push series are registered beside the gateway's
	add(s.metrics.all...)
	add(s.shake.opens)
	gather(s.metrics.reg)
	add(hub.Router().Collectors()...)
	lc, err := remote.NewClient(remote.Config{Addrs: []string{"127.0.0.1:1"}, Auth: remote.ClientAuth{Secret: "dashboard-test-secret-0123456789"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lc.Close() })
	add(lc.Collectors()...)
	// The supervisor (package supervisor, which imports this one): its
	// /metrics is the workers' series merged, under the same names, plus
	// the two below; its own process series come from
	// supervisor.ProcessCollector, this collector.
	// TestSupervisorMetricsNamesForDashboard in package supervisor pins both.
	add(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "longlink_supervisor"}))
	for _, n := range []string{"longlink_workers", "longlink_workers_configured"} {
		have[n], have[n+"_bucket"] = true, true
	}
	return have
}

// The Grafana dashboard only plots series longlink really exports, each
// filtered by the job and host (instance) variables, with panels for push,
// the logic client and shake, and bytes per connection on an axis of its
// own beside RSS.
func TestDashboardMetricsExist(t *testing.T) {
	dash := loadDashboard(t)
	have := exportedSeries(t)
	name := regexp.MustCompile(`\b(longlink_[a-z_]+|process_[a-z_]+)\b(\{[^}]*\})?`)
	n := 0
	areas := map[string]int{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllStringSubmatch(tg.Expr, -1) {
				n++
				if !have[m[1]] {
					t.Errorf("panel %q uses %s, which longlink does not export", p.Title, m[1])
				}
				if !strings.HasPrefix(m[2], `{job=~"$job",instance=~"$instance"`) {
					t.Errorf("panel %q: %s%s is not filtered by job and host", p.Title, m[1], m[2])
				}
				for _, a := range []string{"longlink_push_", "longlink_logic_client_", "longlink_shake_", "longlink_open_", "process_resident_memory_bytes", "longlink_process_rss_anon_bytes"} {
					if strings.HasPrefix(m[1], a) {
						areas[a]++
					}
				}
			}
		}
	}
	if n < 60 {
		t.Fatalf("only %d metric references found", n)
	}
	for _, a := range []string{"longlink_push_", "longlink_logic_client_", "longlink_shake_", "longlink_open_", "process_resident_memory_bytes", "longlink_process_rss_anon_bytes"} {
		if areas[a] == 0 {
			t.Errorf("no panel plots %s*", a)
		}
	}
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		q, _ := v.Query.(string)
		vars[v.Name] = q
	}
	if !strings.Contains(vars["instance"], "instance") {
		t.Errorf("no per-host (instance) template variable: %v", vars)
	}
}

// Bytes per connection (a few KiB) and RSS (GiB) never share one axis.
func TestDashboardBytesPerConnectionOwnAxis(t *testing.T) {
	dash := loadDashboard(t)
	checked := 0
	for _, p := range dash.Panels {
		var rss, perConn []string // refIds
		for _, tg := range p.Targets {
			switch {
			case strings.Contains(tg.Expr, "/ sum(longlink_connections") || strings.Contains(tg.Expr, "/ sum by (instance) (longlink_connections"):
				perConn = append(perConn, tg.RefID)
			case strings.Contains(tg.Expr, "resident_memory_bytes"), strings.Contains(tg.Expr, "rss_anon_bytes"):
				rss = append(rss, tg.RefID)
			}
		}
		if len(perConn) == 0 || len(rss) == 0 {
			continue
		}
		checked++
		for _, ref := range perConn {
			right := false
			for _, o := range p.FieldConfig.Overrides {
				if o.Matcher.ID != "byFrameRefID" || o.Matcher.Options != ref {
					continue
				}
				for _, pr := range o.Properties {
					right = right || (pr.ID == "custom.axisPlacement" && pr.Value == "right")
				}
			}
			if !right {
				t.Errorf("panel %q: bytes per connection (%s) shares the RSS axis", p.Title, ref)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no panel plots RSS beside bytes per connection")
	}
}
