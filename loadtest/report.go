package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Pct is a latency summary in milliseconds.
type Pct struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func pctOf(h *hdr.Histogram) Pct {
	if h == nil || h.TotalCount() == 0 {
		return Pct{}
	}
	ms := func(us int64) float64 { return math.Round(float64(us)) / 1000 }
	return Pct{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
}

// Sample is one point of the time series, taken every second.
type Sample struct {
	T             float64                 `json:"t"` // seconds since the leg started
	Open          int64                   `json:"open"`
	Established   int64                   `json:"established"` // cumulative
	Failed        int64                   `json:"failed"`      // cumulative
	ConnectPerS   float64                 `json:"connect_per_s"`
	HeartbeatPerS float64                 `json:"heartbeat_per_s"`
	RPCPerS       float64                 `json:"rpc_per_s"`
	PushPerS      float64                 `json:"push_per_s"`
	Methods       map[string]MethodSample `json:"methods,omitempty"` // overload scenario
	ShakePerS     float64                 `json:"shake_per_s,omitempty"`
	OpenPerS      float64                 `json:"open_per_s,omitempty"`
	Latency       map[string]Pct          `json:"latency"` // of the values recorded in this second
	ServerRSS     int64                   `json:"server_rss_bytes"`
	ServerAnon    int64                   `json:"server_anon_bytes"`
	ServerCPU     float64                 `json:"server_cpu_cores"`
	ServerConns   int64                   `json:"server_conns"`
	ToolRSS       int64                   `json:"tool_rss_bytes"`
	ToolCPU       float64                 `json:"tool_cpu_cores"`
}

// Report is everything one leg measured; docs/loadtest.md documents each
// field. Against the floor (target_kind "floor") the gateway_* fields
// describe the floor server.
type Report struct {
	TargetKind  string   `json:"target_kind"`
	Target      string   `json:"target"`
	Scenarios   []string `json:"scenarios"`
	WebSocket   bool     `json:"websocket,omitempty"`
	StartedAt   string   `json:"started_at"`
	DurationS   float64  `json:"duration_s"`
	Procs       int      `json:"procs"`
	ServerProcs int      `json:"server_procs,omitempty"`
	Interrupted bool     `json:"interrupted,omitempty"`
	Failure     string   `json:"failure,omitempty"`

	ConnsTarget      int64   `json:"conns_target"`
	ConnsEstablished int64   `json:"conns_established"`
	ConnsPeak        int64   `json:"conns_peak"`
	ConnsFailed      int64   `json:"conns_failed"`
	ConnsDropped     int64   `json:"conns_dropped"`
	ConnectRate      float64 `json:"connect_rate_per_s"`
	RampS            float64 `json:"ramp_s"`
	SteadyS          float64 `json:"steady_s"`

	GatewayRSS          int64   `json:"gateway_rss_bytes"`
	GatewayConns        int64   `json:"gateway_conns"`
	GatewayBytesPerConn float64 `json:"gateway_bytes_per_conn"`
	GatewayRSSBaseline  int64   `json:"gateway_rss_baseline_bytes"`
	GatewayBytesGrowth  float64 `json:"gateway_bytes_per_conn_growth"`
	GatewayAnon         int64   `json:"gateway_anon_bytes"`
	GatewayAnonBaseline int64   `json:"gateway_anon_baseline_bytes"`
	GatewayAnonGrowth   float64 `json:"gateway_anon_bytes_per_conn_growth"`
	GatewayCPUCores     float64 `json:"gateway_cpu_cores"`
	GatewayCPUPerHB     float64 `json:"gateway_cpu_us_per_heartbeat"`
	GatewayCPUPerPush   float64 `json:"gateway_cpu_us_per_push"`
	GatewayCPUPerShake  float64 `json:"gateway_cpu_us_per_shake"`

	HeartbeatPerS  float64 `json:"heartbeat_per_s"`
	HeartbeatP99   float64 `json:"heartbeat_p99_ms"`
	ConnectP99     float64 `json:"connect_p99_ms"`
	AuthP50        float64 `json:"auth_p50_ms"`
	AuthP99        float64 `json:"auth_p99_ms"`
	RPCPerS        float64 `json:"rpc_per_s"`
	RPCP50         float64 `json:"rpc_p50_ms"`
	RPCP99         float64 `json:"rpc_p99_ms"`
	RPCErrors      int64   `json:"rpc_errors"`
	PushPerS       float64 `json:"push_per_s"`
	PushP99        float64 `json:"push_p99_ms"`
	ShakePerS      float64 `json:"shake_per_s"`
	ShakeP99       float64 `json:"shake_p99_ms"`
	OpenPerS       float64 `json:"open_per_s"`
	OpenP99        float64 `json:"open_p99_ms"`
	ShakeSent      int64   `json:"shake_sent"`
	ShakeTickets   int64   `json:"shake_tickets"`
	ShakeNoPacket  int64   `json:"shake_no_packet"`
	ShakeNoSlot    int64   `json:"shake_no_slot"`
	ShakeDegraded  int64   `json:"shake_degraded"`
	OpenOK         int64   `json:"open_ok"`
	OpenErrors     int64   `json:"open_errors"`
	ReconnectRate  float64 `json:"reconnect_rate_per_s"`
	Reconnected    int64   `json:"reconnected"`
	SlowConns      int64   `json:"slow_conns"`
	SlowClosed     int64   `json:"slow_closed"`
	WriteBlocked   int64   `json:"write_blocked"`
	ToolRSS        int64   `json:"tool_rss_bytes"`
	ToolBytesPerCn float64 `json:"tool_bytes_per_conn"`
	ToolCPUCores   float64 `json:"tool_cpu_cores"`

	Params   map[string]string `json:"params"` // the run's configuration, by flag-like name
	Errors   map[string]int64  `json:"errors"`
	Policy   *policySeen       `json:"heartbeat_policy,omitempty"`
	Latency  map[string]Pct    `json:"latency"`
	Counters map[string]int64  `json:"counters"`
	Notes    []string          `json:"notes,omitempty"`
	Series   []Sample          `json:"series"`

	Overload *OverloadReport `json:"overload,omitempty"`

	Floor                *Report  `json:"floor,omitempty"`
	RatioBytesPerConn    *float64 `json:"ratio_bytes_per_conn,omitempty"`
	RatioBytesGrowth     *float64 `json:"ratio_bytes_per_conn_growth,omitempty"`
	RatioAnonGrowth      *float64 `json:"ratio_anon_bytes_per_conn_growth,omitempty"`
	RatioCPUPerHeartbeat *float64 `json:"ratio_cpu_per_heartbeat,omitempty"`
	RatioCPUCores        *float64 `json:"ratio_cpu_cores,omitempty"`
	RatioConnectRate     *float64 `json:"ratio_connect_rate,omitempty"`
	RatioReconnectRate   *float64 `json:"ratio_reconnect_rate,omitempty"`
	RatioCPUPerPush      *float64 `json:"ratio_cpu_per_push,omitempty"`
	RatioHeartbeatP99    *float64 `json:"ratio_heartbeat_p99,omitempty"`
	RatioCPUPerShake     *float64 `json:"ratio_cpu_per_shake,omitempty"`
}

func secs(a, b int64) float64 { return float64(b-a) / 1e9 }

// report turns the leg's final state into a Report.
func (l *leg) report() *Report {
	cfg := l.cfg
	c, times, errs := l.finalC, l.finalTimes, l.finalErrors
	if c == nil {
		c, times, errs, _ = l.sum()
	}
	r := &Report{
		TargetKind: l.kind, Target: l.target, Scenarios: cfg.Scenarios, WebSocket: cfg.WS && l.kind != "floor",
		StartedAt: l.start.UTC().Format(time.RFC3339), Procs: len(l.clients), ServerProcs: l.serverProcs,
		Interrupted: l.interrupted, ConnsTarget: int64(cfg.Conns),
		Errors: errs, Policy: l.policy, Latency: map[string]Pct{}, Counters: c, Series: l.series,
		Params: cfg.params(),
	}
	if r.Errors == nil {
		r.Errors = map[string]int64{}
	}
	if !l.end.IsZero() {
		r.DurationS = l.end.Sub(l.start).Seconds()
	}
	// Held at the end of the steady state: the last sample before stop.
	if n := len(l.series); n > 0 {
		r.ConnsEstablished = l.series[n-1].Open
	}
	r.ConnsPeak = l.peakOpen
	r.ConnsFailed = c["failed"]
	r.ConnsDropped = c["dropped"]
	rampUp := c["established"] - c["reconnected"]
	if s, ok := times["ramp_start"]; ok {
		end, done := times["ramp_end"]
		if !done || end <= s {
			end = l.steadyEnd.UnixNano()
		}
		r.RampS = secs(s, end)
		if r.RampS > 0 {
			r.ConnectRate = float64(rampUp) / r.RampS
		}
	}
	if s, ok := times["reconnect_start"]; ok {
		r.Reconnected = c["reconnected"]
		end, done := times["reconnect_end"]
		if !done || end <= s {
			end = l.steadyEnd.UnixNano()
			r.Notes = append(r.Notes, "reconnect storm did not finish before the end of the run")
		}
		if d := secs(s, end); d > 0 {
			r.ReconnectRate = float64(r.Reconnected) / d
		}
	}
	// Steady-state window: from every worker's ramp done to the stop.
	l.mu.Lock()
	steadyAt := l.steadyAt
	lat := l.steady
	if steadyAt.IsZero() || len(lat) == 0 {
		lat = l.cum
	}
	for name, h := range l.cum {
		r.Latency[name] = pctOf(h)
	}
	l.mu.Unlock()
	base, baseSrv, toolBase := l.base, l.baseSrv, l.toolAtSteady
	from := steadyAt
	if steadyAt.IsZero() {
		from = l.start
		base = counters{}
		baseSrv = l.firstSrv
		toolBase = procUsage{}
		r.Notes = append(r.Notes, "the ramp did not finish: steady-state figures cover the whole run")
	}
	win := l.steadyEnd.Sub(from).Seconds()
	r.SteadyS = win
	if win > 0 {
		r.HeartbeatPerS = float64(c["pongs"]-base["pongs"]) / win
		r.RPCPerS = float64(c["rpc_ok"]-base["rpc_ok"]) / win
		r.PushPerS = float64(c["push_recv"]-base["push_recv"]) / win
		r.ShakePerS = float64(c["shake_ok"]-base["shake_ok"]) / win
		r.OpenPerS = float64(c["open_ok"]-base["open_ok"]) / win
		r.ToolCPUCores = (l.lastTool.CPU - toolBase.CPU) / win
	}
	r.HeartbeatP99 = pctOf(lat["heartbeat"]).P99
	r.RPCP50 = pctOf(lat["rpc"]).P50
	r.RPCP99 = pctOf(lat["rpc"]).P99
	r.PushP99 = pctOf(lat["push"]).P99
	r.ShakeP99 = pctOf(lat["shake"]).P99
	r.OpenP99 = pctOf(lat["open"]).P99
	r.Overload = l.overloadReport(c)
	r.ShakeSent, r.ShakeTickets, r.ShakeNoPacket = c["shake_sent"], c["shake_ticket"], c["shake_none"]
	r.ShakeNoSlot, r.ShakeDegraded = c["shake_noslot"]+c["shake_over"], c["shake_degraded"]
	r.OpenOK, r.OpenErrors = c["open_ok"], c["open_err"]+c["open_timeout"]
	r.ConnectP99 = r.Latency["connect"].P99
	r.AuthP50 = r.Latency["auth"].P50
	r.AuthP99 = r.Latency["auth"].P99
	r.RPCErrors = c["rpc_err"]
	r.SlowConns = c["slow_conns"]
	r.SlowClosed = c["slow_closed"]
	r.WriteBlocked = c["write_blocked"]
	r.ToolRSS = l.lastTool.RSS
	if r.ConnsEstablished > 0 {
		r.ToolBytesPerCn = float64(r.ToolRSS) / float64(r.ConnsEstablished)
	}

	srv := l.lastSrv
	if srv.OK {
		r.GatewayRSS = srv.RSS
		r.GatewayConns = srv.Conns
		held := srv.Conns
		if held <= 0 {
			held = r.ConnsEstablished
		}
		if held > 0 {
			r.GatewayBytesPerConn = float64(srv.RSS) / float64(held)
		}
		if pre := l.preSrv; pre.OK && pre.RSS > 0 {
			r.GatewayRSSBaseline = pre.RSS
			switch {
			case held <= 0:
			case srv.RSS > pre.RSS:
				r.GatewayBytesGrowth = float64(srv.RSS-pre.RSS) / float64(held)
			default:
				r.Notes = append(r.Notes, "server RSS did not grow over its baseline: gateway_bytes_per_conn_growth left at 0")
			}
		}
		// The same for anonymous memory (heap, stacks), which leaves out
		// the executable's file pages: what connections really cost.
		r.GatewayAnon = srv.Anon
		if pre := l.preSrv; pre.OK && pre.Anon > 0 && srv.Anon > 0 {
			r.GatewayAnonBaseline = pre.Anon
			switch {
			case held <= 0:
			case srv.Anon > pre.Anon:
				r.GatewayAnonGrowth = float64(srv.Anon-pre.Anon) / float64(held)
			default:
				r.Notes = append(r.Notes, "server anonymous memory did not grow over its baseline: gateway_anon_bytes_per_conn_growth left at 0")
			}
		}
		// The CPU window: between the good reads of the server's usage at
		// (or soon after) the start of the steady state and at (or shortly
		// before) its end, with the clients' counters of those moments.
		cwin, cb, ce := win, base, c
		if !steadyAt.IsZero() && !l.baseSrvAt.IsZero() && !l.lastSrvAt.IsZero() {
			cwin = l.lastSrvAt.Sub(l.baseSrvAt).Seconds()
			cb, ce = l.baseSrvC, l.lastSrvC
			if gap := l.steadyEnd.Sub(l.lastSrvAt) + l.baseSrvAt.Sub(steadyAt); gap > 5*time.Second {
				r.Notes = append(r.Notes, fmt.Sprintf("server usage reads failed for %.0fs of the steady state: its CPU figures cover %.0fs", gap.Seconds(), cwin))
			}
		}
		if baseSrv.OK && cwin > 0 {
			cpu := srv.CPU - baseSrv.CPU
			pushScen := slices.Contains(cfg.Scenarios, "push")
			if l.kind == "floor" && !pushScen {
				// The push round is timed separately; keep it out of the
				// steady-state CPU so CPU per echo is what it says.
				cpu -= float64(ce["floor_push_cpu_ns"]-cb["floor_push_cpu_ns"]) / 1e9
			}
			r.GatewayCPUCores = cpu / cwin
			onlyHB, onlyShake := true, false
			for _, s := range cfg.Scenarios {
				if s != "idle" && s != "heartbeat" {
					onlyHB = false
				}
				if s == "shake" {
					onlyShake = true
				}
			}
			for _, s := range cfg.Scenarios {
				if s != "idle" && s != "heartbeat" && s != "shake" {
					onlyShake = false
				}
			}
			if onlyShake {
				// Shakes and heartbeats are both answered on the loop: CPU
				// per frame answered (floor: per 16-byte echo of either).
				if n := ce["shake_ok"] - cb["shake_ok"] + ce["pongs"] - cb["pongs"]; n > 0 {
					r.GatewayCPUPerShake = cpu / float64(n) * 1e6
				}
			}
			if p := ce["push_recv"] - cb["push_recv"]; p > 0 && (l.kind == "gateway" || pushScen) {
				// The push scenario: whole-process CPU per delivered notify
				// (the floor pushes at the same rate: like for like).
				r.GatewayCPUPerPush = cpu / float64(p) * 1e6
			}
			if hb := ce["pongs"] - cb["pongs"]; hb > 0 && onlyHB {
				r.GatewayCPUPerHB = cpu / float64(hb) * 1e6
			} else if !onlyHB {
				r.Notes = append(r.Notes, "gateway_cpu_us_per_heartbeat is only given for the idle and heartbeat scenarios")
			}
		}
	} else if l.kind == "gateway" {
		if cfg.Admin == "" {
			r.Notes = append(r.Notes, "no --admin: the gateway's memory and CPU were not read")
		} else {
			r.Notes = append(r.Notes, "gateway metrics unavailable: "+l.metricsErr)
		}
	}
	if w := c["floor_push_writes"]; w > 0 && (r.GatewayCPUPerPush == 0 || !slices.Contains(cfg.Scenarios, "push")) {
		r.GatewayCPUPerPush = float64(c["floor_push_cpu_ns"]) / float64(w) / 1e3
	}
	switch {
	case l.fatal != nil:
		r.Failure = l.fatal.Error()
	case r.ConnsEstablished == 0 && r.ConnsPeak == 0:
		r.Failure = "no connection was established"
	case float64(r.ConnsFailed) > cfg.MaxFail*float64(cfg.Conns):
		r.Failure = fmt.Sprintf("%d of %d connections failed (more than --max-fail %g)", r.ConnsFailed, cfg.Conns, cfg.MaxFail)
	case float64(r.ConnsDropped-r.SlowClosed) > cfg.MaxFail*float64(cfg.Conns):
		// e.g. the server crashed: everything held was closed under us
		r.Failure = fmt.Sprintf("the server closed %d of %d connections (more than --max-fail %g)", r.ConnsDropped-r.SlowClosed, cfg.Conns, cfg.MaxFail)
	}
	return r
}

func ratio(a, b float64) *float64 {
	if a <= 0 || b <= 0 {
		return nil
	}
	v := math.Round(a/b*1000) / 1000
	return &v
}

// computeRatios sets the ratio_* fields: each gateway figure divided by the
// floor's (for rates, above 1 is better; for costs, below 1 is better).
func (r *Report) computeRatios() {
	f := r.Floor
	if f == nil {
		return
	}
	r.RatioBytesPerConn = ratio(r.GatewayBytesPerConn, f.GatewayBytesPerConn)
	r.RatioBytesGrowth = ratio(r.GatewayBytesGrowth, f.GatewayBytesGrowth)
	r.RatioAnonGrowth = ratio(r.GatewayAnonGrowth, f.GatewayAnonGrowth)
	r.RatioCPUPerHeartbeat = ratio(r.GatewayCPUPerHB, f.GatewayCPUPerHB)
	r.RatioCPUCores = ratio(r.GatewayCPUCores, f.GatewayCPUCores)
	r.RatioConnectRate = ratio(r.ConnectRate, f.ConnectRate)
	r.RatioReconnectRate = ratio(r.ReconnectRate, f.ReconnectRate)
	r.RatioCPUPerPush = ratio(r.GatewayCPUPerPush, f.GatewayCPUPerPush)
	r.RatioHeartbeatP99 = ratio(r.HeartbeatP99, f.HeartbeatP99)
	r.RatioCPUPerShake = ratio(r.GatewayCPUPerShake, f.GatewayCPUPerShake)
}

// WriteJSONFile writes the report as indented JSON.
func (r *Report) WriteJSONFile(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// fig formats a figure, or "n/a" where it was not computed (0).
func fig(v float64) string {
	if v == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}

// ms formats a latency in milliseconds, or "n/a" where none was measured.
func ms(v float64) string {
	if v == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fms", v)
}

func fmtBytes(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

// WriteSummary prints the human summary.
func (r *Report) WriteSummary(w io.Writer) {
	if r.Floor != nil {
		r.Floor.writeOne(w)
		fmt.Fprintln(w)
	}
	r.writeOne(w)
	if r.Floor != nil {
		fmt.Fprintln(w, "gateway / floor:")
		pr := func(name string, v *float64, better string) {
			if v != nil {
				fmt.Fprintf(w, "  %-22s %.3f  (%s)\n", name, *v, better)
			}
		}
		pr("memory per conn", r.RatioBytesPerConn, "lower is better")
		pr("memory growth per conn", r.RatioBytesGrowth, "lower is better")
		pr("anon growth per conn", r.RatioAnonGrowth, "lower is better")
		pr("CPU per heartbeat", r.RatioCPUPerHeartbeat, "lower is better; goal <= 1.2")
		pr("CPU cores (steady)", r.RatioCPUCores, "lower is better")
		pr("connect rate", r.RatioConnectRate, "higher is better")
		pr("reconnect rate", r.RatioReconnectRate, "higher is better; goal >= 0.7")
		pr("heartbeat p99", r.RatioHeartbeatP99, "lower is better")
		pr("CPU per shake", r.RatioCPUPerShake, "lower is better; floor: per echo; goal <= 1.2")
		pr("CPU per pushed notify", r.RatioCPUPerPush, "lower is better; push scenario: whole-process CPU per delivered push on both sides, the floor pushing at the same rate; goal <= 1.25")
	}
}

func (r *Report) writeOne(w io.Writer) {
	name := "gateway"
	if r.TargetKind == "floor" {
		name = "floor server"
	}
	fmt.Fprintf(w, "== %s %s  scenarios %s  %d worker procs, %.1fs", r.TargetKind, r.Target, strings.Join(r.Scenarios, ","), r.Procs, r.DurationS)
	if r.WebSocket {
		fmt.Fprint(w, "  (WebSocket)")
	}
	if r.Interrupted {
		fmt.Fprint(w, "  (interrupted)")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  connections  %d/%d held (peak %d), %d failed, %d dropped; ramp %.1fs at %.0f/s\n",
		r.ConnsEstablished, r.ConnsTarget, r.ConnsPeak, r.ConnsFailed, r.ConnsDropped, r.RampS, r.ConnectRate)
	fmt.Fprintf(w, "  latency      connect p99 %s  auth p50 %s p99 %s  heartbeat p99 %s\n",
		ms(r.ConnectP99), ms(r.AuthP50), ms(r.AuthP99), ms(r.HeartbeatP99))
	if rc := r.Latency["reconnect"]; rc.Count > 0 {
		fmt.Fprintf(w, "  reconnect    %d reconnected (drop to AUTH_OK) p50 %s p99 %s max %s\n", rc.Count, ms(rc.P50), ms(rc.P99), ms(rc.Max))
	}
	fmt.Fprintf(w, "  steady %.1fs  heartbeats %.0f/s", r.SteadyS, r.HeartbeatPerS)
	if r.RPCPerS > 0 || r.RPCErrors > 0 {
		fmt.Fprintf(w, "  rpc %.0f/s p50 %s p99 %s (%d errors)", r.RPCPerS, ms(r.RPCP50), ms(r.RPCP99), r.RPCErrors)
	}
	if r.PushPerS > 0 {
		fmt.Fprintf(w, "  push %.0f/s p99 %s", r.PushPerS, ms(r.PushP99))
	}
	fmt.Fprintln(w)
	if r.ShakeSent > 0 {
		fmt.Fprintf(w, "  shake        %.0f/s p99 %.2fms: %d sent, %d tickets, %d no packet, %d no slot/over, %d with degrade hints\n",
			r.ShakePerS, r.ShakeP99, r.ShakeSent, r.ShakeTickets, r.ShakeNoPacket, r.ShakeNoSlot, r.ShakeDegraded)
	}
	if r.OpenOK > 0 || r.OpenErrors > 0 {
		fmt.Fprintf(w, "  open         %.0f/s p99 %.2fms: %d opened (%d again), %d failed, %.2f yuan\n",
			r.OpenPerS, r.OpenP99, r.OpenOK, r.Counters["open_again"], r.OpenErrors, float64(r.Counters["open_fen"])/100)
	}
	if o := r.Overload; o != nil {
		for _, st := range o.Steps {
			fmt.Fprintf(w, "  step %-9s %5.1f-%5.1fs at %.0f calls/s", st.Name, st.FromS, st.ToS, st.Rate)
			if st.ShedStoppedS != nil {
				fmt.Fprintf(w, "; last shed %.1fs in, p99 back within 2x %.1fs in", *st.ShedStoppedS, *st.P99RecoveredS)
			}
			fmt.Fprintln(w)
			for _, m := range o.Mix {
				ms := st.Methods[m.Method]
				if ms == nil {
					continue
				}
				fmt.Fprintf(w, "    %-10s sent %6.0f/s admitted %6.0f/s shed %6.0f/s (%4.1f%%) p50/p99 %.2f/%.2fms settled %.2f/%.2fms; users served %d/%d (%.1f%%, random %.1f%%), shed %d, mixed %d\n",
					m.Method, ms.SentPerS, ms.AdmittedPerS, ms.ShedPerS, 100*ms.ShedFrac, ms.P50, ms.P99, ms.SettledP50, ms.SettledP99,
					ms.UsersServed, ms.Users, 100*ms.ServedFrac, 100*ms.RandomServed, ms.UsersShed, ms.UsersMixed)
			}
		}
	}
	if r.Reconnected > 0 {
		fmt.Fprintf(w, "  reconnect    %d re-established at %.0f/s\n", r.Reconnected, r.ReconnectRate)
	}
	if r.SlowConns > 0 {
		fmt.Fprintf(w, "  slow         %d slow consumers, %d closed by the server, %d writes blocked\n", r.SlowConns, r.SlowClosed, r.WriteBlocked)
	}
	if r.GatewayRSS > 0 {
		fmt.Fprintf(w, "  %-12s rss %s for %d conns = %.0f B/conn", name, fmtBytes(float64(r.GatewayRSS)), r.GatewayConns, r.GatewayBytesPerConn)
		if r.GatewayRSSBaseline > 0 {
			fmt.Fprintf(w, " (baseline %s, growth %.0f B/conn)", fmtBytes(float64(r.GatewayRSSBaseline)), r.GatewayBytesGrowth)
		}
		if r.GatewayAnon > 0 {
			fmt.Fprintf(w, "; anon %s", fmtBytes(float64(r.GatewayAnon)))
			if r.GatewayAnonBaseline > 0 {
				fmt.Fprintf(w, " (baseline %s, growth %.0f B/conn)", fmtBytes(float64(r.GatewayAnonBaseline)), r.GatewayAnonGrowth)
			}
		}
		fmt.Fprintf(w, "; CPU %.3f cores", r.GatewayCPUCores)
		if r.GatewayCPUPerHB > 0 {
			fmt.Fprintf(w, ", %.1f µs per heartbeat", r.GatewayCPUPerHB)
		}
		if r.GatewayCPUPerShake > 0 {
			fmt.Fprintf(w, ", %.1f µs per shake or heartbeat", r.GatewayCPUPerShake)
		}
		if r.GatewayCPUPerPush > 0 {
			fmt.Fprintf(w, ", %.1f µs per pushed write", r.GatewayCPUPerPush)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  load tool    rss %s = %.0f B/conn, CPU %.2f cores\n", fmtBytes(float64(r.ToolRSS)), r.ToolBytesPerCn, r.ToolCPUCores)
	if len(r.Errors) > 0 {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprint(w, "  errors      ")
		for _, k := range keys {
			fmt.Fprintf(w, " %s=%d", k, r.Errors[k])
		}
		fmt.Fprintln(w)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "  note:", n)
	}
	if r.Failure != "" {
		fmt.Fprintln(w, "  FAILED:", r.Failure)
	}
}
