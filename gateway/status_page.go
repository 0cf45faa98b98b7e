package gateway

import (
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// WriteStatus serves st as /status: JSON for ?format=json or an Accept of
// application/json, else the HTML console. The supervisor serves its merged
// Status with it, so both pages are the same.
func WriteStatus(w http.ResponseWriter, r *http.Request, st Status) {
	if r.URL.Query().Get("format") == "json" || accepts(r, "application/json") {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusPage.Execute(w, st); err != nil {
		fmt.Fprintf(w, "<p>status page: %s</p>", template.HTMLEscapeString(err.Error()))
	}
}

// Chart geometry (SVG user units; the page scales it to its column).
const (
	chartW, chartH         = 660.0, 190.0
	padL, padR, padT, padB = 58.0, 14.0, 30.0, 30.0
	plotW, plotH           = chartW - padL - padR, chartH - padT - padB
	yTicks                 = 4
)

var lineColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

// niceCeil is the smallest 1, 2, 2.5 or 5 times a power of ten >= x.
func niceCeil(x float64) float64 {
	if x <= 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*e >= x*(1-1e-9) {
			return m * e
		}
	}
	return 10 * e
}

// shortNum formats an axis or summary figure: 950, 1.5k, 12M, 0.25.
func shortNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e9:
		return strconv.FormatFloat(v/1e9, 'g', 3, 64) + "G"
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + "k"
	case a >= 100 || a == 0:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// chart renders series as an inline SVG line chart with a y axis (ticks in
// unit, after dividing by scale), a time axis over the last five minutes,
// a legend and the newest value. Server-side: no scripts, no CDN.
// Arguments after scale alternate: label string, series []float64.
func chart(title, unit string, scale float64, pairs ...any) (template.HTML, error) {
	type line struct {
		label string
		xs    []float64
	}
	var lines []line
	for i := 0; i+1 < len(pairs); i += 2 {
		l, ok1 := pairs[i].(string)
		xs, ok2 := pairs[i+1].([]float64)
		if !ok1 || !ok2 {
			return "", fmt.Errorf("chart %q: want label, series pairs", title)
		}
		lines = append(lines, line{l, xs})
	}
	hi, n := 0.0, 0
	for _, l := range lines {
		n = max(n, len(l.xs))
		for _, x := range l.xs {
			hi = max(hi, x/scale)
		}
	}
	step := niceCeil(hi / yTicks)
	top := step * yTicks
	var b strings.Builder
	esc := template.HTMLEscapeString
	fmt.Fprintf(&b, `<figure class="chart" data-title="%s"><svg viewBox="0 0 %.0f %.0f" role="img" aria-label="%s (%s)">`, esc(title), chartW, chartH, esc(title), esc(unit))
	fmt.Fprintf(&b, `<text class="ct" x="%.0f" y="16">%s <tspan class="unit">(%s)</tspan></text>`, padL, esc(title), esc(unit))
	// y axis: grid lines and tick labels
	for i := 0; i <= yTicks; i++ {
		v := step * float64(i)
		y := padT + plotH - plotH*float64(i)/yTicks
		fmt.Fprintf(&b, `<line class="grid" x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f"/><text class="yt" x="%.0f" y="%.1f">%s</text>`,
			padL, padL+plotW, y, y, padL-6, y+4, shortNum(v))
	}
	// time axis: a tick a minute, "now" at the right edge
	for m := 0; m <= seriesLen/60; m++ {
		x := padL + plotW*float64(max(0, seriesLen-1-m*60))/float64(seriesLen-1) // the oldest point is 299 s ago
		lbl := "now"
		if m > 0 {
			lbl = fmt.Sprintf("−%dm", m)
		}
		fmt.Fprintf(&b, `<line class="axis" x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f"/><text class="xt" x="%.1f" y="%.0f">%s</text>`,
			x, x, padT+plotH, padT+plotH+4, x, padT+plotH+18, lbl)
	}
	fmt.Fprintf(&b, `<line class="axis" x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f"/>`, padL, padL+plotW, padT+plotH, padT+plotH)
	fmt.Fprintf(&b, `<line class="axis" x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f"/>`, padL, padL, padT, padT+plotH)
	if n < 2 {
		fmt.Fprintf(&b, `<text class="wait" x="%.0f" y="%.0f">collecting…</text>`, padL+plotW/2, padT+plotH/2)
	}
	legendX := chartW - padR
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		color := lineColors[i%len(lineColors)]
		if len(l.xs) >= 2 {
			var pts strings.Builder
			off := seriesLen - len(l.xs)
			for j, x := range l.xs {
				fmt.Fprintf(&pts, "%.1f,%.1f ", padL+plotW*float64(off+j)/float64(seriesLen-1), padT+plotH-plotH*(x/scale)/top)
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>`, color, pts.String())
		}
		now := "–"
		if len(l.xs) > 0 {
			now = shortNum(l.xs[len(l.xs)-1] / scale)
		}
		txt := l.label + " " + now
		fmt.Fprintf(&b, `<text class="lg" x="%.0f" y="16" fill="%s">%s</text>`, legendX, color, esc(txt))
		legendX -= 9*float64(len([]rune(txt))) + 18
	}
	b.WriteString(`</svg></figure>`)
	return template.HTML(b.String()), nil
}

// switchRow is one switch for the page, by its JSON name.
type switchRow struct{ Key, Value string }

func switchRows(sw *Switches) []switchRow {
	if sw == nil {
		return nil
	}
	raw, _ := json.Marshal(sw)
	var m map[string]json.RawMessage
	_ = json.Unmarshal(raw, &m)
	var out []switchRow
	for _, k := range SwitchKeys() {
		v := string(m[k])
		if v == "" || v == "null" {
			v = "(as configured)"
		}
		out = append(out, switchRow{k, strings.Trim(v, `"`)})
	}
	return out
}

func mib(b float64) string { return shortNum(b/(1<<20)) + " MiB" }

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"dur":      func(s float64) string { return (time.Duration(s) * time.Second).Round(time.Second).String() },
	"chart":    chart,
	"num":      shortNum,
	"mib":      mib,
	"switches": switchRows,
	"clock":    func(t time.Time) string { return t.UTC().Format("15:04:05") },
	"reverse": func(xs []AuditLine) []AuditLine {
		out := make([]AuditLine, len(xs))
		for i, x := range xs {
			out[len(xs)-1-i] = x
		}
		return out
	},
}).Parse(`<!doctype html><html><head><meta charset="utf-8">
<noscript><meta http-equiv="refresh" content="2"></noscript>
<title>longlink {{.Node}}</title><style>
body{font:14px system-ui,sans-serif;margin:1.2em 2em;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 .3em}h2{font-size:15px;margin:1.2em 0 .4em;color:#444}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-size:12px;margin-right:.4em;background:#e8f5e9;color:#1b5e20}
.bad{background:#ffebee;color:#b71c1c}.warn{background:#fff8e1;color:#8d6e00}
.kpis{display:grid;grid-template-columns:repeat(9,1fr);gap:.5em;margin:.8em 0}
.kpi{background:#f6f7f9;border-radius:6px;padding:.4em .6em}.kpi b{display:block;font-size:18px}.kpi span{color:#666;font-size:12px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:.6em}
figure.chart{margin:0;background:#fbfbfc;border:1px solid #eee;border-radius:6px}
svg{width:100%;height:auto;display:block}
.ct{font-size:14px;font-weight:600;fill:#333}.unit{font-weight:400;fill:#666}
.yt{font-size:11px;fill:#666;text-anchor:end}.xt{font-size:11px;fill:#666;text-anchor:middle}
.lg{font-size:12px;text-anchor:end}.wait{font-size:13px;fill:#999;text-anchor:middle}
.grid{stroke:#e6e6e6}.axis{stroke:#999}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1.5em}
table{border-collapse:collapse}td,th{padding:.2em .8em .2em 0;text-align:left;vertical-align:top}th{color:#666;font-weight:500;border-bottom:1px solid #ddd}
.up{color:#1b5e20}.down{color:#b71c1c}
#audit td{font:12px ui-monospace,monospace}
a{color:#1f77b4}
</style></head>
<body><h1>longlink gateway · {{.Node}}</h1>
<div><span class="badge{{if .Draining}} bad{{end}}">{{if .Draining}}draining{{else}}serving{{end}}</span>
<span class="badge{{if .Ready}} bad{{end}}" title="{{.Ready}}">{{if .Ready}}not ready: {{.Ready}}{{else}}ready{{end}}</span>
<span class="badge{{if .Degrade}} warn{{end}}">degrade level {{.Degrade}}</span>
<span class="badge" style="background:#eef">version {{.Version}}</span>
<span class="badge" style="background:#eef">up {{dur .UptimeS}}</span>
{{if .Workers}}<span class="badge" style="background:#eef">{{.Workers}} workers</span>{{end}}</div>
<div class="kpis">
<div class="kpi"><b>{{.Connections}}</b><span>connections</span></div>
<div class="kpi"><b>{{.Users}}</b><span>users online</span></div>
<div class="kpi"><b>{{num .CallsPerS}}</b><span>calls/s</span></div>
<div class="kpi"><b>{{num .ErrorsPerS}}</b><span>call errors/s</span></div>
<div class="kpi"><b>{{num .PushPerS}}</b><span>pushes/s</span></div>
<div class="kpi"><b>{{num .HeartbeatsPerS}}</b><span>heartbeats/s</span></div>
<div class="kpi"><b>{{mib .RSSBytes}}</b><span>RSS</span></div>
<div class="kpi"><b>{{mib .AnonBytes}}</b><span>anonymous RSS</span></div>
<div class="kpi"><b>{{num .CPUPercent}}%</b><span>CPU (one core = 100)</span></div>
</div>
<h2>Last five minutes</h2><div class="charts">
{{chart "Connections" "count" 1.0 "open" .Series.Conns}}
{{chart "Calls" "calls/s" 1.0 "calls" .Series.CallsPerS}}
{{chart "Push deliveries" "pushes/s" 1.0 "delivered" .Series.PushPerS}}
{{chart "Heartbeats" "heartbeats/s" 1.0 "received" .Series.Heartbeats}}
{{chart "Queueing time" "ms" 1.0 "average" .Series.QueueMS}}
{{chart "Shed calls" "calls/s" 1.0 "shed" .Series.ShedPerS}}
{{chart "Memory" "MiB" 1048576.0 "RSS" .Series.RSS "anonymous" .Series.Anon}}
{{chart "CPU" "% of one core" 1.0 "user+system" .Series.CPU}}
</div>
<div class="cols"><div>
<h2>Links</h2><table id="links"><tr><th>link</th><th>address</th><th>state</th></tr>
{{range .Links}}<tr><td>{{.Name}}</td><td>{{.Addr}}</td><td class="{{if .Up}}up{{else}}down{{end}}">{{if .Up}}up{{else}}down{{if .Err}}: {{.Err}}{{end}}{{end}}</td></tr>
{{else}}<tr><td colspan="3">none</td></tr>{{end}}</table>
</div><div>
<h2>Switches</h2><table id="switches"><tr><th>switch</th><th>value</th></tr>
<tr><td>degrade level in force</td><td>{{.Degrade}}</td></tr>
{{range switches .Switches}}<tr><td>{{.Key}}</td><td>{{.Value}}</td></tr>
{{end}}</table></div></div>
{{if .WorkerRows}}<h2>Workers</h2><table id="workers"><tr><th>#</th><th>node</th><th>state</th><th>connections</th><th>calls/s</th><th>pushes/s</th><th>RSS</th><th>anonymous</th><th>CPU %</th><th>degrade</th><th>up for</th></tr>
{{range .WorkerRows}}<tr><td>{{.Index}}</td><td>{{.Node}}</td>{{if .Up}}<td class="{{if or .Ready .Draining}}down{{else}}up{{end}}">{{if .Draining}}draining{{else if .Ready}}not ready: {{.Ready}}{{else}}ready{{end}}</td><td>{{.Connections}}</td><td>{{num .CallsPerS}}</td><td>{{num .PushPerS}}</td><td>{{mib .RSSBytes}}</td><td>{{mib .AnonBytes}}</td><td>{{num .CPUPercent}}</td><td>{{.Degrade}}</td><td>{{dur .UptimeS}}</td>{{else}}<td class="down" colspan="9">not answering</td>{{end}}</tr>
{{end}}</table>{{end}}
<h2>Recent audit lines</h2><table id="audit">
{{range reverse .Audit}}<tr><td>{{clock .Time}}</td><td>{{if .From}}{{.From}} {{end}}{{.Line}}</td></tr>
{{else}}<tr><td>none yet</td></tr>{{end}}</table>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a> · <a href="/status?format=json">json</a> · times UTC</p>
<script>
// Refresh in place every 2 s (no flicker, keeps the scroll position).
setInterval(async () => {
  try {
    const r = await fetch(location.href, {cache: "no-store"});
    if (r.ok) document.body.innerHTML = new DOMParser().parseFromString(await r.text(), "text/html").body.innerHTML;
  } catch (e) {}
}, 2000);
</script></body></html>`))
