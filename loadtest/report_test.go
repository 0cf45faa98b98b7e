package loadtest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/internal/testutil"
)

// Every ratio the JSON carries is printed in the text summary and the HTML
// report; figures not computed read "n/a", never 0.00; the run's parameters
// are in the report.
func TestReportShowsEveryRatioAndParams(t *testing.T) {
	r := &Report{TargetKind: "gateway", Floor: &Report{TargetKind: "floor"}}
	rv := reflect.ValueOf(r).Elem()
	n := 0
	for i := range rv.NumField() {
		if f := rv.Type().Field(i); strings.HasPrefix(f.Name, "Ratio") {
			v := 1.0 + float64(n)/1000 // distinct values to find in the text
			rv.Field(i).Set(reflect.ValueOf(&v))
			n++
		}
	}
	cfg := DefaultConfig()
	r.Params = cfg.params()
	var b bytes.Buffer
	r.WriteSummary(&b)
	out := b.String()
	for i := range n {
		if want := "1.00" + string(rune('0'+i%10)); i < 10 && !strings.Contains(out, want) {
			t.Errorf("summary lacks ratio %d (%s):\n%s", i, want, out)
		}
	}
	if strings.Contains(out, "0.00ms") || !strings.Contains(out, "n/a") {
		t.Errorf("latencies never measured must read n/a:\n%s", out)
	}
	if r.Params["Conns"] != "1000" || r.Params["Duration"] != "30s" {
		t.Errorf("params: %v", r.Params)
	}
	path := filepath.Join(t.TempDir(), "r.html")
	if err := r.WriteHTMLFile(path); err != nil {
		t.Fatal(err)
	}
	html, _ := os.ReadFile(path)
	if c := strings.Count(string(html), "1.00"); c < n {
		t.Errorf("HTML shows %d of %d ratios", c, n)
	}
	if !strings.Contains(string(html), "<td>Conns</td><td>1000</td>") {
		t.Error("HTML lacks the parameters table")
	}
}

// With stderr not a terminal (CI, a log file) the tool still says how the run
// goes, as plain lines every few seconds.
func TestProgressLinesWithoutTerminal(t *testing.T) {
	cfg := small(50, logEvery+1500*time.Millisecond, "idle")
	cfg.Floor = true
	cfg.Quiet = false
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var log testutil.SyncBuffer
	if _, err := Run(ctx, cfg, &log); err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}
	out := log.String()
	if !strings.Contains(out, "loadtest: [floor]") || strings.Contains(out, "\r") {
		t.Fatalf("want plain progress lines, got:\n%s", out)
	}
}
