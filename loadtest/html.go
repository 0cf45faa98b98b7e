package loadtest

import (
	"fmt"
	"html/template"
	"math"
	"os"
	"sort"
	"strings"
)

// The HTML report is one self-contained page: inline CSS and inline SVG
// charts drawn here, no scripts and nothing fetched (the network may be
// closed where it is opened).

type line struct {
	name  string
	color string
	ys    []float64
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

// chart draws a line chart of xs against each line's ys.
func chart(title, unit string, xs []float64, lines []line) template.HTML {
	const w, h, ml, mr, mt, mb = 640.0, 240.0, 64.0, 12.0, 28.0, 40.0
	var b strings.Builder
	ymax := 0.0
	for _, l := range lines {
		for _, y := range l.ys {
			if !math.IsNaN(y) && y > ymax {
				ymax = y
			}
		}
	}
	if ymax <= 0 {
		ymax = 1
	}
	ymax = niceCeil(ymax)
	xmax := 1.0
	if n := len(xs); n > 0 && xs[n-1] > 0 {
		xmax = xs[n-1]
	}
	px := func(x float64) float64 { return ml + x/xmax*(w-ml-mr) }
	py := func(y float64) float64 { return h - mb - y/ymax*(h-mt-mb) }
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" role="img">`, w, h, w, h)
	fmt.Fprintf(&b, `<text x="%.0f" y="18" class="t">%s</text>`, ml, template.HTMLEscapeString(title))
	for i := 0; i <= 4; i++ {
		y := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" class="g"/>`, ml, w-mr, py(y), py(y))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="a" text-anchor="end">%s</text>`, ml-4, py(y)+4, shortNum(y))
	}
	for i := 0; i <= 5; i++ {
		x := xmax * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="a" text-anchor="middle">%.0fs</text>`, px(x), h-mb+16, x)
	}
	fmt.Fprintf(&b, `<text x="12" y="%.1f" class="a" transform="rotate(-90 12 %.1f)" text-anchor="middle">%s</text>`, (h-mb+mt)/2, (h-mb+mt)/2, template.HTMLEscapeString(unit))
	lx := ml
	for _, l := range lines {
		var pts []string
		for i, y := range l.ys {
			if i < len(xs) && !math.IsNaN(y) {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(xs[i]), py(y)))
			}
		}
		if len(pts) > 0 {
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.8" points="%s"/>`, l.color, strings.Join(pts, " "))
		}
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="10" height="3" fill="%s"/><text x="%.0f" y="%.0f" class="a">%s</text>`, lx, h-10, l.color, lx+14, h-6, template.HTMLEscapeString(l.name))
		lx += 14 + 7*float64(len(l.name)) + 16
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func shortNum(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.3gG", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.3gk", v/1e3)
	}
	return fmt.Sprintf("%.3g", v)
}

type htmlLeg struct {
	Title  string
	Report *Report
	Charts []template.HTML
	Lat    []htmlLat
}

type htmlLat struct {
	Name string
	Pct
}

func legCharts(r *Report) htmlLeg {
	var xs []float64
	get := func(f func(Sample) float64) []float64 {
		out := make([]float64, len(r.Series))
		for i, s := range r.Series {
			out[i] = f(s)
		}
		return out
	}
	for _, s := range r.Series {
		xs = append(xs, s.T)
	}
	hl := htmlLeg{Title: r.TargetKind + " " + r.Target, Report: r}
	hl.Charts = append(hl.Charts,
		chart("connections", "connections", xs, []line{
			{"open", palette[0], get(func(s Sample) float64 { return float64(s.Open) })},
			{"failed", palette[1], get(func(s Sample) float64 { return float64(s.Failed) })},
			{"server reports", palette[2], get(func(s Sample) float64 {
				if s.ServerConns < 0 {
					return math.NaN()
				}
				return float64(s.ServerConns)
			})},
		}),
		chart("rates", "per second", xs, []line{
			{"connects", palette[0], get(func(s Sample) float64 { return s.ConnectPerS })},
			{"heartbeats", palette[1], get(func(s Sample) float64 { return s.HeartbeatPerS })},
			{"rpc", palette[2], get(func(s Sample) float64 { return s.RPCPerS })},
			{"push", palette[3], get(func(s Sample) float64 { return s.PushPerS })},
			{"shake", palette[4], get(func(s Sample) float64 { return s.ShakePerS })},
			{"open", palette[5], get(func(s Sample) float64 { return s.OpenPerS })},
		}))
	names := map[string]bool{}
	for _, s := range r.Series {
		for n := range s.Latency {
			names[n] = true
		}
	}
	var sorted []string
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var lat []line
	for i, n := range sorted {
		n := n
		c := palette[i%len(palette)]
		lat = append(lat, line{n + " p99", c, get(func(s Sample) float64 {
			if p, ok := s.Latency[n]; ok && p.Count > 0 {
				return p.P99
			}
			return math.NaN()
		})})
	}
	hl.Charts = append(hl.Charts,
		chart("latency p99 per second", "ms", xs, lat),
		chart("memory", "MiB", xs, []line{
			{"server rss", palette[0], get(func(s Sample) float64 {
				if s.ServerRSS <= 0 { // not read this second (--admin-every) or the read failed
					return math.NaN()
				}
				return float64(s.ServerRSS) / (1 << 20)
			})},
			{"server anon", palette[2], get(func(s Sample) float64 {
				if s.ServerAnon <= 0 {
					return math.NaN()
				}
				return float64(s.ServerAnon) / (1 << 20)
			})},
			{"load tool rss", palette[3], get(func(s Sample) float64 { return float64(s.ToolRSS) / (1 << 20) })},
		}),
		chart("CPU", "cores", xs, []line{
			{"server", palette[0], get(func(s Sample) float64 {
				if s.ServerConns < 0 {
					return math.NaN()
				}
				return s.ServerCPU
			})},
			{"load tool", palette[3], get(func(s Sample) float64 { return s.ToolCPU })},
		}))
	var lnames []string
	for n := range r.Latency {
		lnames = append(lnames, n)
	}
	sort.Strings(lnames)
	for _, n := range lnames {
		hl.Lat = append(hl.Lat, htmlLat{n, r.Latency[n]})
	}
	return hl
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"bytes": func(v int64) string {
		if v == 0 {
			return "n/a"
		}
		return fmtBytes(float64(v))
	},
	"f": fig,
	"r": func(v *float64) string {
		if v == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.3f", *v)
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>longlink loadtest</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1360px}
h1{font-size:20px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{border:1px solid #ddd;background:#fff}
.t{font-size:13px;font-weight:600}.a{font-size:11px;fill:#555}.g{stroke:#eee}
.bad{color:#b00}
</style></head><body>
<h1>longlink loadtest — {{.Main.Report.TargetKind}} {{.Main.Report.Target}}</h1>
<p>Started {{.Main.Report.StartedAt}}; scenarios {{range .Main.Report.Scenarios}}{{.}} {{end}}; {{.Main.Report.ConnsTarget}} connections.
{{if .Main.Report.Failure}}<b class="bad">FAILED: {{.Main.Report.Failure}}</b>{{end}}</p>
{{if .Floor}}
<h2>Gateway as a ratio to the floor</h2>
<table><tr><th>figure</th><th>ratio</th><th>better</th></tr>
<tr><td>memory per connection</td><td>{{r .Main.Report.RatioBytesPerConn}}</td><td>lower</td></tr>
<tr><td>memory growth per connection (over the baseline)</td><td>{{r .Main.Report.RatioBytesGrowth}}</td><td>lower</td></tr>
<tr><td>anonymous memory growth per connection</td><td>{{r .Main.Report.RatioAnonGrowth}}</td><td>lower</td></tr>
<tr><td>CPU per heartbeat (floor: per 16-byte echo)</td><td>{{r .Main.Report.RatioCPUPerHeartbeat}}</td><td>lower</td></tr>
<tr><td>CPU cores in steady state</td><td>{{r .Main.Report.RatioCPUCores}}</td><td>lower</td></tr>
<tr><td>connect rate</td><td>{{r .Main.Report.RatioConnectRate}}</td><td>higher</td></tr>
<tr><td>reconnect (accept+auth) rate</td><td>{{r .Main.Report.RatioReconnectRate}}</td><td>higher</td></tr>
<tr><td>heartbeat p99</td><td>{{r .Main.Report.RatioHeartbeatP99}}</td><td>lower</td></tr>
<tr><td>CPU per shake (floor: per echo)</td><td>{{r .Main.Report.RatioCPUPerShake}}</td><td>lower</td></tr>
<tr><td>CPU per pushed notify (whole-process CPU per delivered push, both sides)</td><td>{{r .Main.Report.RatioCPUPerPush}}</td><td>lower</td></tr>
</table>{{end}}
<h2>Parameters</h2>
<table><tr><th>parameter</th><th>value</th></tr>
{{range $k, $v := .Main.Report.Params}}<tr><td>{{$k}}</td><td>{{$v}}</td></tr>{{end}}
</table>
{{range .Legs}}
<h2>{{.Title}}</h2>
<table><tr><th>figure</th><th>value</th></tr>
<tr><td>connections held / target (peak)</td><td>{{.Report.ConnsEstablished}} / {{.Report.ConnsTarget}} ({{.Report.ConnsPeak}})</td></tr>
<tr><td>failed / dropped</td><td>{{.Report.ConnsFailed}} / {{.Report.ConnsDropped}}</td></tr>
<tr><td>connect rate</td><td>{{f .Report.ConnectRate}} /s over {{f .Report.RampS}} s</td></tr>
<tr><td>server memory (rss), per connection</td><td>{{bytes .Report.GatewayRSS}}, {{f .Report.GatewayBytesPerConn}} B</td></tr>
<tr><td>server baseline before the ramp; growth per connection</td><td>{{bytes .Report.GatewayRSSBaseline}}; {{f .Report.GatewayBytesGrowth}} B</td></tr>
<tr><td>server anonymous memory (heap, stacks); baseline; growth per connection</td><td>{{bytes .Report.GatewayAnon}}; {{bytes .Report.GatewayAnonBaseline}}; {{f .Report.GatewayAnonGrowth}} B</td></tr>
<tr><td>server CPU in steady state</td><td>{{f .Report.GatewayCPUCores}} cores; {{f .Report.GatewayCPUPerHB}} µs per heartbeat</td></tr>
<tr><td>heartbeats, rpc, push per second</td><td>{{f .Report.HeartbeatPerS}}, {{f .Report.RPCPerS}}, {{f .Report.PushPerS}}</td></tr>
<tr><td>reconnect rate</td><td>{{f .Report.ReconnectRate}} /s</td></tr>
{{if .Report.ShakeSent}}<tr><td>shakes: per second, p99; tickets, no packet, degrade hints; CPU per shake</td><td>{{f .Report.ShakePerS}} /s, {{f .Report.ShakeP99}} ms; {{.Report.ShakeTickets}}, {{.Report.ShakeNoPacket}}, {{.Report.ShakeDegraded}}; {{f .Report.GatewayCPUPerShake}} µs</td></tr>{{end}}
{{if or .Report.OpenOK .Report.OpenErrors}}<tr><td>opens: per second, p99; ok, failed</td><td>{{f .Report.OpenPerS}} /s, {{f .Report.OpenP99}} ms; {{.Report.OpenOK}}, {{.Report.OpenErrors}}</td></tr>{{end}}
<tr><td>load tool memory, per connection</td><td>{{bytes .Report.ToolRSS}}, {{f .Report.ToolBytesPerCn}} B</td></tr>
</table>
<table><tr><th>latency</th><th>count</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>
{{range .Lat}}<tr><td>{{.Name}}</td><td>{{.Count}}</td><td>{{f .P50}}</td><td>{{f .P90}}</td><td>{{f .P99}}</td><td>{{f .P999}}</td><td>{{f .Max}}</td></tr>{{end}}
</table>
{{if .Report.Errors}}<table><tr><th>error</th><th>count</th></tr>{{range $k, $v := .Report.Errors}}<tr><td>{{$k}}</td><td>{{$v}}</td></tr>{{end}}</table>{{end}}
{{range .Report.Notes}}<p>note: {{.}}</p>{{end}}
<div class="charts">{{range .Charts}}{{.}}{{end}}</div>
{{end}}
</body></html>
`))

// WriteHTMLFile writes the self-contained HTML report.
func (r *Report) WriteHTMLFile(path string) error {
	data := struct {
		Main  htmlLeg
		Floor bool
		Legs  []htmlLeg
	}{Main: legCharts(r), Floor: r.Floor != nil}
	if r.Floor != nil {
		data.Legs = append(data.Legs, legCharts(r.Floor))
	}
	data.Legs = append(data.Legs, data.Main)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pageTmpl.Execute(f, data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
