package loadtest

import (
	"bytes"
	"context"
	"math"
	"math/rand/v2"
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

// TestSparseHistMatchesHDR: a worker's sparse interval histogram, merged
// into the parent's HDR histogram, gives the percentiles an HDR histogram
// recording the same values directly gives (within its 3-digit precision),
// and a report empties it.
func TestSparseHistMatchesHDR(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	direct, merged := newHist(), newHist()
	s := sparseHist{}
	for i := 0; i < 200000; i++ {
		// 1 µs to ~10 min, log-uniform: every bucket size is exercised.
		v := int64(math.Exp(rng.Float64()*math.Log(6e8))) + 1
		if k := histKey(v); k > v || v-k > v/1024 {
			t.Fatalf("histKey(%d) = %d: not within 1/1024 below", v, k)
		}
		_ = direct.RecordValue(v)
		s.record(v)
		if i%50000 == 49999 { // several reports, as a worker sends them
			mergePairs(merged, s.pairs())
			if len(s) != 0 {
				t.Fatalf("pairs left %d buckets behind", len(s))
			}
		}
	}
	if direct.TotalCount() != merged.TotalCount() {
		t.Fatalf("count %d merged, %d direct", merged.TotalCount(), direct.TotalCount())
	}
	for _, q := range []float64{1, 10, 50, 90, 99, 99.9, 100} {
		a, b := direct.ValueAtQuantile(q), merged.ValueAtQuantile(q)
		if d := math.Abs(float64(a - b)); d > float64(a)/500+1 {
			t.Errorf("p%v: merged %d, direct %d", q, b, a)
		}
	}
}
