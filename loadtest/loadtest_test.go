package loadtest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil/gatewaytest"
	"github.com/longlink/longlink/secure"
)

// TestMain lets the test binary serve as the tool's worker processes: the
// supervisor re-executes os.Executable() with LONGLINK_LOADTEST_CHILD set.
func TestMain(m *testing.M) {
	if IsChild() {
		os.Exit(ChildMain())
	}
	os.Exit(m.Run())
}

// small returns a bounded configuration for tests.
func small(conns int, d time.Duration, scen ...string) Config {
	cfg := DefaultConfig()
	cfg.Conns = conns
	cfg.Duration = d
	cfg.Rate = 0 // as fast as the in-flight cap allows
	cfg.Procs = 2
	cfg.Scenarios = scen
	cfg.Quiet = true
	return cfg
}

func run(t *testing.T, cfg Config) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration*3+20*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, cfg, testLog{t})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep == nil {
		t.Fatal("no report")
	}
	legs := time.Duration(1)
	if cfg.CompareFloor {
		legs = 2
	}
	if el := time.Since(start); el > legs*(cfg.Duration+8*time.Second) {
		t.Errorf("run took %v, not bounded by --duration %v", el, cfg.Duration)
	}
	return rep
}

type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func summary(r *Report) string {
	var b strings.Builder
	r.WriteSummary(&b)
	return b.String()
}

func TestFloorIdleHeartbeatStormAndPush(t *testing.T) {
	cfg := small(300, 3*time.Second, "idle", "heartbeat")
	cfg.Floor = true
	cfg.Storm = 200 * time.Millisecond
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" || r.ConnsEstablished != 300 || r.ConnsFailed != 0 {
		t.Fatalf("held %d failed %d failure %q", r.ConnsEstablished, r.ConnsFailed, r.Failure)
	}
	if r.Procs != 2 || r.ServerProcs < 1 {
		t.Errorf("procs %d server procs %d", r.Procs, r.ServerProcs)
	}
	// 300 conns every 200 ms is 1500/s; allow for the ramp and scheduling.
	if r.HeartbeatPerS < 500 {
		t.Errorf("heartbeat storm gave %.0f echoes/s, want about 1500", r.HeartbeatPerS)
	}
	if r.Latency["heartbeat"].Count == 0 || r.Latency["connect"].Count != 300 {
		t.Errorf("latency %+v", r.Latency)
	}
	if got := r.Counters["push_recv"]; got != 300 {
		t.Errorf("floor push round delivered %d of 300", got)
	}
	if r.GatewayCPUPerPush <= 0 || r.PushP99 <= 0 {
		t.Errorf("push cpu %v p99 %v", r.GatewayCPUPerPush, r.PushP99)
	}
	if r.GatewayRSS <= 0 || r.GatewayBytesPerConn <= 0 || r.GatewayConns != 300 {
		t.Errorf("floor memory %d (%f/conn), conns %d", r.GatewayRSS, r.GatewayBytesPerConn, r.GatewayConns)
	}
	checkBaseline(t, r)
	if r.ToolRSS <= 0 || len(r.Series) < 2 {
		t.Errorf("tool rss %d, %d samples", r.ToolRSS, len(r.Series))
	}
}

func TestFloorRPCReconnectSlow(t *testing.T) {
	cfg := small(200, 3*time.Second, "rpc", "reconnect", "slow")
	cfg.Floor = true
	cfg.RPCRate = 400
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" {
		t.Fatal(r.Failure)
	}
	if r.RPCPerS < 100 || r.Latency["rpc"].Count == 0 {
		t.Errorf("rpc %.0f/s, latency %+v", r.RPCPerS, r.Latency["rpc"])
	}
	if r.Reconnected != 200 || r.ReconnectRate <= 0 {
		t.Errorf("reconnected %d at %.0f/s", r.Reconnected, r.ReconnectRate)
	}
	if r.SlowConns != 20 {
		t.Errorf("slow consumers %d, want 10%% of 200", r.SlowConns)
	}
}

// testGateway starts an in-process gateway with a fresh key file and admin
// server; it returns the listen and admin addresses and the key file.
func testGateway(t *testing.T) (addr, admin, keys string) {
	return testGatewayWith(t, nil)
}

// testGatewayWith is testGateway with a shake event (nil: none).
func testGatewayWith(t *testing.T, sc *gateway.ShakeConfig) (addr, admin, keys string) {
	return testGatewayCfg(t, gateway.Config{Shake: sc})
}

// testGatewayCfg starts an in-process gateway from cfg (listen, keys, one
// loop and a quiet logger filled in).
func testGatewayCfg(t *testing.T, cfg gateway.Config) (addr, admin, keys string) {
	t.Helper()
	keys = filepath.Join(t.TempDir(), "keys.json")
	ks, err := auth.CreateKeyFile(keys)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Keys, cfg.Loops = ks, 1
	cfg.Listen, cfg.Logger = "", nil // gatewaytest's: 127.0.0.1:0, quiet
	s := gatewaytest.Start(t, cfg)
	admin, err = s.ServeAdmin("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return s.Addr(), admin, keys
}

func TestGatewayHeartbeatJSONAndHTML(t *testing.T) {
	addr, admin, keys := testGateway(t)
	cfg := small(300, 3*time.Second, "heartbeat")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.Storm = 250 * time.Millisecond
	dir := t.TempDir()
	cfg.JSON = filepath.Join(dir, "r.json")
	cfg.HTML = filepath.Join(dir, "r.html")
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" || r.ConnsEstablished != 300 {
		t.Fatalf("held %d, failure %q, errors %v", r.ConnsEstablished, r.Failure, r.Errors)
	}
	if a := r.Latency["auth"]; a.Count != 300 || a.P99 <= 0 {
		t.Errorf("auth latency %+v", a)
	}
	if r.HeartbeatPerS < 300 || r.Latency["heartbeat"].Count == 0 {
		t.Errorf("heartbeats %.0f/s", r.HeartbeatPerS)
	}
	if r.GatewayRSS <= 0 || r.GatewayConns != 300 || r.GatewayCPUCores <= 0 || r.GatewayCPUPerHB <= 0 {
		t.Errorf("gateway rss %d conns %d cpu %.3f per hb %.1f", r.GatewayRSS, r.GatewayConns, r.GatewayCPUCores, r.GatewayCPUPerHB)
	}
	if r.Policy == nil || r.Policy.MaxS == 0 {
		t.Errorf("heartbeat policy from AUTH_OK not recorded: %+v", r.Policy)
	}
	checkBaseline(t, r)
	if err := r.WriteJSONFile(cfg.JSON); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHTMLFile(cfg.HTML); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfg.JSON)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"conns_target", "conns_established", "conns_failed", "connect_rate_per_s",
		"gateway_rss_bytes", "gateway_bytes_per_conn", "gateway_cpu_cores", "rpc_per_s", "rpc_p99_ms",
		"push_per_s", "push_p99_ms", "shake_per_s", "shake_p99_ms", "open_per_s", "errors", "series",
		"gateway_rss_baseline_bytes", "gateway_bytes_per_conn_growth", "gateway_anon_bytes",
		"gateway_anon_bytes_per_conn_growth"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON report lacks %q", k)
		}
	}
	if _, ok := m["errors"].(map[string]any); !ok {
		t.Errorf("errors is %T, want an object", m["errors"])
	}
	page, err := os.ReadFile(cfg.HTML)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "polyline", "connections", "latency"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("HTML report lacks %q", want)
		}
	}
	for _, banned := range []string{"<script src", "https://", "<link"} {
		if strings.Contains(string(page), banned) {
			t.Errorf("HTML report is not self-contained: has %q", banned)
		}
	}
}

func TestGatewayRPCAndReconnect(t *testing.T) {
	addr, admin, keys := testGateway(t)
	cfg := small(200, 3*time.Second, "rpc", "reconnect")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.RPCRate = 500
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" {
		t.Fatalf("%s (errors %v)", r.Failure, r.Errors)
	}
	if r.RPCPerS < 100 || r.RPCErrors != 0 || r.RPCP99 <= 0 {
		t.Errorf("rpc %.0f/s p99 %.2fms errors %d %v", r.RPCPerS, r.RPCP99, r.RPCErrors, r.Errors)
	}
	if r.Reconnected != 200 || r.ReconnectRate <= 0 {
		t.Errorf("reconnected %d at %.0f/s, errors %v", r.Reconnected, r.ReconnectRate, r.Errors)
	}
	if r.ConnsEstablished != 200 {
		t.Errorf("held %d after the reconnect storm", r.ConnsEstablished)
	}
}

func TestGatewaySlowConsumersAreShed(t *testing.T) {
	addr, admin, keys := testGateway(t)
	cfg := small(100, 3*time.Second, "slow")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.SlowFrac = 0.2
	cfg.SlowBody = 60000
	cfg.SlowInterval = 10 * time.Millisecond
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.SlowConns != 20 {
		t.Fatalf("slow consumers %d, want 20", r.SlowConns)
	}
	if r.SlowClosed == 0 || r.Latency["slow"].Count == 0 {
		t.Errorf("the gateway shed none of %d slow consumers (errors %v)", r.SlowConns, r.Errors)
	}
	if r.ConnsEstablished < 80 {
		t.Errorf("normal connections were lost too: held %d", r.ConnsEstablished)
	}
}

func TestGatewayWrongKeysFailWithAuthCode(t *testing.T) {
	addr, _, _ := testGateway(t)
	other := filepath.Join(t.TempDir(), "keys.json")
	if _, err := auth.CreateKeyFile(other); err != nil {
		t.Fatal(err)
	}
	cfg := small(50, 2*time.Second)
	cfg.Target, cfg.Keys, cfg.Procs = addr, other, 1
	r := run(t, cfg)
	if r.ConnsFailed != 50 || r.ConnsEstablished != 0 {
		t.Fatalf("failed %d held %d, errors %v", r.ConnsFailed, r.ConnsEstablished, r.Errors)
	}
	if r.Failure == "" {
		t.Error("a run where everything failed did not report a failure")
	}
	found := false
	for k := range r.Errors {
		if strings.HasPrefix(k, "auth:") {
			found = true
		}
	}
	if !found {
		t.Errorf("errors %v: want auth:<code>", r.Errors)
	}
}

func TestCompareFloorGivesRatios(t *testing.T) {
	addr, admin, keys := testGateway(t)
	cfg := small(200, 2500*time.Millisecond, "idle")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.CompareFloor = true
	cfg.Heartbeat = 500 * time.Millisecond
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Floor == nil || r.Floor.TargetKind != "floor" || r.TargetKind != "gateway" {
		t.Fatalf("legs: %+v", r.Floor)
	}
	if r.Floor.ConnsEstablished != 200 || r.ConnsEstablished != 200 {
		t.Errorf("held floor %d gateway %d", r.Floor.ConnsEstablished, r.ConnsEstablished)
	}
	if r.RatioBytesPerConn == nil || r.RatioConnectRate == nil {
		t.Errorf("ratios missing: mem %v connect %v", r.RatioBytesPerConn, r.RatioConnectRate)
	}
	b, _ := json.Marshal(r)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if _, ok := m["floor"].(map[string]any); !ok {
		t.Error("JSON has no floor object")
	}
}

// checkBaseline: the server's baseline was read before the ramp, and the
// growth-based figure never exceeds the whole-process one.
func checkBaseline(t *testing.T, r *Report) {
	t.Helper()
	if r.GatewayRSSBaseline <= 0 || r.GatewayRSSBaseline > r.GatewayRSS*4 {
		t.Errorf("%s baseline rss %d (final %d)", r.TargetKind, r.GatewayRSSBaseline, r.GatewayRSS)
	}
	if r.GatewayBytesGrowth < 0 || r.GatewayBytesGrowth >= r.GatewayBytesPerConn {
		t.Errorf("%s growth %.0f B/conn, whole process %.0f B/conn", r.TargetKind, r.GatewayBytesGrowth, r.GatewayBytesPerConn)
	}
	// Anonymous memory is part of RSS, and read before the ramp too.
	if r.GatewayAnon <= 0 || r.GatewayAnon > r.GatewayRSS || r.GatewayAnonBaseline <= 0 || r.GatewayAnonBaseline > r.GatewayRSSBaseline {
		t.Errorf("%s anon %d (baseline %d), rss %d (baseline %d)", r.TargetKind, r.GatewayAnon, r.GatewayAnonBaseline, r.GatewayRSS, r.GatewayRSSBaseline)
	}
}

// TestMemoryBaselineFigures checks the arithmetic of the memory fields on a
// synthetic leg: whole-process, growth over the pre-ramp baseline, ratios.
func TestMemoryBaselineFigures(t *testing.T) {
	cfg := DefaultConfig()
	mk := func(kind string, pre, final, conns int64) *Report {
		// Anonymous memory: 4 MiB of the baseline, and 2/3 of the growth.
		l := &leg{cfg: &cfg, kind: kind, finalC: counters{}, finalTimes: map[string]int64{},
			preSrv:  serverUsage{OK: true, RSS: pre, Anon: 4 << 20, Conns: 0},
			lastSrv: serverUsage{OK: true, RSS: final, Anon: 4<<20 + (final-pre)*2/3, Conns: conns}}
		return l.report()
	}
	g := mk("gateway", 10<<20, 10<<20+900_000, 1000)
	if g.GatewayRSSBaseline != 10<<20 || g.GatewayBytesPerConn != float64(10<<20+900_000)/1000 || g.GatewayBytesGrowth != 900 {
		t.Fatalf("gateway: baseline %d per conn %.1f growth %.1f", g.GatewayRSSBaseline, g.GatewayBytesPerConn, g.GatewayBytesGrowth)
	}
	if g.GatewayAnonBaseline != 4<<20 || g.GatewayAnon != 4<<20+600_000 || g.GatewayAnonGrowth != 600 {
		t.Fatalf("gateway anon: baseline %d final %d growth %.1f", g.GatewayAnonBaseline, g.GatewayAnon, g.GatewayAnonGrowth)
	}
	g.Floor = mk("floor", 4<<20, 4<<20+600_000, 1000)
	g.computeRatios()
	if g.RatioBytesGrowth == nil || *g.RatioBytesGrowth != 1.5 || g.RatioBytesPerConn == nil {
		t.Fatalf("ratios: growth %v whole %v", g.RatioBytesGrowth, g.RatioBytesPerConn)
	}
	if g.RatioAnonGrowth == nil || *g.RatioAnonGrowth != 1.5 {
		t.Fatalf("anon growth ratio %v", g.RatioAnonGrowth)
	}
	if s := summary(g); !strings.Contains(s, "growth 900 B/conn") || !strings.Contains(s, "memory growth per conn") ||
		!strings.Contains(s, "growth 600 B/conn") || !strings.Contains(s, "anon growth per conn") {
		t.Errorf("summary lacks the growth figures:\n%s", s)
	}
	// RSS below the baseline (memory returned to the OS): no growth figure,
	// a note, no ratio.
	s := mk("gateway", 10<<20, 9<<20, 1000)
	if s.GatewayBytesGrowth != 0 || len(s.Notes) == 0 {
		t.Errorf("shrunk: growth %.1f notes %v", s.GatewayBytesGrowth, s.Notes)
	}
	// No baseline read (no --admin before the ramp): fields stay 0.
	l := &leg{cfg: &cfg, kind: "gateway", finalC: counters{}, finalTimes: map[string]int64{},
		lastSrv: serverUsage{OK: true, RSS: 5 << 20, Conns: 100}}
	if r := l.report(); r.GatewayRSSBaseline != 0 || r.GatewayBytesGrowth != 0 {
		t.Errorf("no baseline: %d %.1f", r.GatewayRSSBaseline, r.GatewayBytesGrowth)
	}
}

// TestCPUWindowBetweenGoodReads: when the last scrapes of the server fail,
// the CPU figures come from the last good read and the client counters of
// that moment, not from a failed read (which would drop them) or the
// counters at the stop (which would dilute them).
func TestCPUWindowBetweenGoodReads(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenarios = []string{"idle"}
	t0 := time.Unix(1000, 0)
	l := &leg{cfg: &cfg, kind: "gateway", start: t0, steadyAt: t0.Add(10 * time.Second),
		steadyEnd: t0.Add(60 * time.Second),
		finalC:    counters{"pongs": 9000}, finalTimes: map[string]int64{},
		base:      counters{"pongs": 1000},
		baseSrv:   serverUsage{OK: true, CPU: 5, RSS: 1 << 20},
		baseSrvAt: t0.Add(10 * time.Second),
		baseSrvC:  counters{"pongs": 1000},
		lastSrv:   serverUsage{OK: true, CPU: 7, RSS: 2 << 20, Conns: 100},
		lastSrvAt: t0.Add(50 * time.Second),
		lastSrvC:  counters{"pongs": 5000},
		series:    []Sample{{Open: 100}},
	}
	r := l.report()
	// 2 CPU seconds over 40 s between the good reads, 4000 heartbeats.
	if r.GatewayCPUCores != 0.05 || r.GatewayCPUPerHB != 500 {
		t.Errorf("cpu %.4f cores, %.1f µs/heartbeat; want 0.05 and 500", r.GatewayCPUCores, r.GatewayCPUPerHB)
	}
	if r.GatewayRSS != 2<<20 || len(r.Notes) == 0 {
		t.Errorf("rss %d notes %v", r.GatewayRSS, r.Notes)
	}
}

func TestConfigChecks(t *testing.T) {
	cases := []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Target = "10.1.2.3:7100" }, "loopback"},
		{func(c *Config) { c.Scenarios = []string{"nope"} }, "unknown scenario"},
		{func(c *Config) { c.Duration = 0 }, "bounded"},
		{func(c *Config) { c.PerProc = 1 << 30 }, "open-file limit"},
		{func(c *Config) { c.Conns = 10_000_000; c.Sources = nil; c.Procs = 0; c.PerProc = 15000 }, "ephemeral ports"},
	}
	for _, tc := range cases {
		cfg := DefaultConfig()
		tc.mod(&cfg)
		_, err := Run(context.Background(), cfg, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
	}
	cfg := DefaultConfig()
	cfg.Target = "10.1.2.3:7100"
	cfg.AllowRemote = true
	if err := cfg.normalize(); err != nil {
		t.Errorf("--allow-remote: %v", err)
	}
	if len(cfg.Sources) != 0 {
		t.Errorf("a remote target got loopback sources %v", cfg.Sources)
	}
}

func TestParsers(t *testing.T) {
	for in, want := range map[string]float64{"5000": 5000, "5000/s": 5000, "120/m": 2, "0": 0} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := parseRate("fast"); err == nil {
		t.Error("parseRate accepted garbage")
	}
	src, err := parseSources("127.0.0.2-127.0.0.80")
	if err != nil || len(src) != 79 || src[0].String() != "127.0.0.2" || src[78].String() != "127.0.0.80" {
		t.Errorf("range: %v %v", len(src), err)
	}
	src, err = parseSources("127.0.0.5,127.0.1.1-127.0.1.2")
	if err != nil || len(src) != 3 {
		t.Errorf("list: %v %v", src, err)
	}
	if s, _ := parseSources("none"); s != nil {
		t.Errorf("none: %v", s)
	}
	m, err := parseMetrics(strings.NewReader(`# HELP x
process_resident_memory_bytes 1.5e+06
longlink_connections{worker="0"} 10
longlink_connections{worker="1",a="}"} 5
process_cpu_seconds_total 2.5
`))
	if err != nil || m[metricRSS] != 1.5e6 || m[metricConns] != 15 || m[metricCPU] != 2.5 {
		t.Errorf("parseMetrics: %v %v", m, err)
	}
}

func TestGatewayWebSocket(t *testing.T) {
	addr, admin, keys := testGateway(t)
	cfg := small(200, 3*time.Second, "heartbeat", "rpc")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.WS = true
	cfg.Storm = 250 * time.Millisecond
	cfg.RPCRate = 300
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" || r.ConnsEstablished != 200 || len(r.Errors) != 0 {
		t.Fatalf("held %d, failure %q, errors %v", r.ConnsEstablished, r.Failure, r.Errors)
	}
	if !r.WebSocket || r.Counters["ws_upgraded"] != 200 || r.Latency["upgrade"].Count != 200 {
		t.Errorf("websocket %v, upgraded %d, upgrade latency %+v", r.WebSocket, r.Counters["ws_upgraded"], r.Latency["upgrade"])
	}
	if r.HeartbeatPerS < 200 || r.RPCPerS < 50 || r.RPCErrors != 0 || r.Counters["ws_messages"] == 0 {
		t.Errorf("heartbeats %.0f/s, rpc %.0f/s (%d errors), %d messages", r.HeartbeatPerS, r.RPCPerS, r.RPCErrors, r.Counters["ws_messages"])
	}
	if r.GatewayConns != 200 || r.GatewayAnon <= 0 {
		t.Errorf("gateway conns %d anon %d", r.GatewayConns, r.GatewayAnon)
	}
}

// TestWSClientFraming: a server message carrying two frames is unwrapped
// into both; a server ping is answered with a masked pong carrying the same
// payload; a close is recorded.
func TestWSClientFraming(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	e := &engine{spec: &childSpec{WS: true}, conns: make([]conn, 1), errors: map[string]int64{},
		hists: map[string]sparseHist{}, extra: map[string]int64{}, rng: 1, now: time.Now().UnixNano()}
	e.conns[0] = conn{fd: int32(fds[0]), state: stUp, hbAt: e.now - 1000}
	defer e.closeFD(&e.conns[0], false)
	pong := codec.HeaderOnly(codec.CmdPong, 1)
	push := codec.AppendFrame(nil, codec.CmdPush, 0, 0, nil)
	two := append(append([]byte{0x82, byte(len(pong) + len(push))}, pong[:]...), push...)
	ping := []byte{0x89, 3, 'a', 'b', 'c'}
	closeMsg := []byte{0x88, 2, 0x03, 0xE8}
	data := append(append(append([]byte(nil), two...), ping...), closeMsg...)
	data = append(data, 0x82) // the start of the next message
	n, alive := e.parseWS(0, data)
	if !alive || n != len(data)-1 {
		t.Fatalf("consumed %d of %d, alive %v, errors %v", n, len(data), alive, e.errors)
	}
	if e.pongs != 1 || e.pushRecv != 1 || e.extra["ws_messages"] != 1 || e.extra["ws_pings"] != 1 || e.errors["ws:close:1000"] != 1 {
		t.Errorf("pongs %d pushes %d extra %v errors %v", e.pongs, e.pushRecv, e.extra, e.errors)
	}
	buf := make([]byte, 64)
	m, err := unix.Read(fds[1], buf)
	if err != nil || m != 2+4+3 || buf[0] != 0x8A || buf[1] != 0x80|3 {
		t.Fatalf("pong %x (%v)", buf[:max(m, 0)], err)
	}
	got := buf[6:9]
	for k := range got {
		got[k] ^= buf[2+k&3]
	}
	if string(got) != "abc" {
		t.Errorf("pong payload %q", got)
	}
	// An unmasked client message header is never produced: every write is masked.
	if w := e.wsWrap(wsOpBinary, make([]byte, 300)); w[1] != 0x80|126 || len(w) != 4+4+300 {
		t.Errorf("300-byte message header %x", w[:4])
	}
}

// encryptedGateway is testGatewayCfg with one server key and encryption
// required; k is the key the clients pin.
func encryptedGateway(t *testing.T) (addr, admin, keys string, k secure.ServerKey) {
	t.Helper()
	k, err := secure.GenerateKey(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := secure.NewKeyRing([]secure.ServerKey{k}, 1)
	addr, admin, keys = testGatewayCfg(t, gateway.Config{ServerKeys: ring, Encryption: gateway.EncryptionRequired})
	return addr, admin, keys, k
}

// --encrypt against a gateway that requires encryption: every connection
// handshakes (HELLO), heartbeats and calls go sealed, and a plaintext run
// against the same gateway is refused with 4010.
func TestGatewayEncrypted(t *testing.T) {
	addr, admin, keys, k := encryptedGateway(t)
	cfg := small(200, 3*time.Second, "heartbeat", "rpc")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.Encrypt, cfg.ServerKey = true, k.Pin()
	cfg.Heartbeat, cfg.RPCRate = 500*time.Millisecond, 200
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" || r.ConnsEstablished != 200 || r.ConnsFailed != 0 {
		t.Fatalf("held %d failed %d failure %q errors %v", r.ConnsEstablished, r.ConnsFailed, r.Failure, r.Errors)
	}
	if r.HeartbeatPerS <= 0 || r.RPCPerS <= 0 || r.RPCErrors != 0 {
		t.Errorf("heartbeats %.0f/s rpc %.0f/s errors %d %v", r.HeartbeatPerS, r.RPCPerS, r.RPCErrors, r.Errors)
	}
	plain := small(20, time.Second, "idle")
	plain.Target, plain.Keys, plain.Procs, plain.MaxFail = addr, keys, 1, 1
	r = run(t, plain)
	if r.ConnsEstablished != 0 || r.Errors["auth:encryption_required"] != 20 {
		t.Errorf("plaintext against required: held %d, errors %v", r.ConnsEstablished, r.Errors)
	}
}

// --encrypt with the reconnect scenario: the connections prepare their next
// handshake after the ramp (secure.Prepare), so every reconnect of the storm
// starts from a prepared one (one X25519 in the tool) and still handshakes.
func TestGatewayEncryptedReconnectPrepared(t *testing.T) {
	addr, admin, keys, k := encryptedGateway(t)
	cfg := small(200, 3*time.Second, "reconnect")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.Encrypt, cfg.ServerKey = true, k.Pin()
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" || r.Reconnected != 200 || r.ConnsFailed != 0 {
		t.Fatalf("reconnected %d failed %d failure %q errors %v", r.Reconnected, r.ConnsFailed, r.Failure, r.Errors)
	}
	if n := r.Counters["encrypt_prepared_hellos"]; n != 200 {
		t.Fatalf("%d of 200 reconnects used a prepared handshake (counters %v)", n, r.Counters)
	}
}

// TestAdminEvery: with --admin-every the gateway's /metrics is read at
// that pace (plus the reads before the ramp, at the steady state and at
// the end), and the run still has the gateway's memory and CPU figures.
func TestAdminEvery(t *testing.T) {
	addr, admin, keys := testGateway(t)
	var reads atomic.Int64
	target, err := url.Parse("http://" + admin)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			reads.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	cfg := small(100, 6*time.Second, "idle")
	cfg.Target, cfg.Admin, cfg.Keys = addr, strings.TrimPrefix(proxy.URL, "http://"), keys
	cfg.AdminEvery = 3 * time.Second
	r := run(t, cfg)
	if r.Failure != "" || r.ConnsEstablished != 100 {
		t.Fatalf("held %d, failure %q", r.ConnsEstablished, r.Failure)
	}
	// 1 Hz would be ~6 reads in the run plus the fixed ones; at 3 s, 2.
	if n := reads.Load(); n > 6 {
		t.Errorf("%d /metrics reads in a 6 s run with --admin-every 3s", n)
	}
	if r.GatewayRSS <= 0 || r.GatewayConns != 100 || r.GatewayCPUCores <= 0 {
		t.Errorf("gateway figures lost: rss %d conns %d cpu %.3f", r.GatewayRSS, r.GatewayConns, r.GatewayCPUCores)
	}
}

// TestRampHeartbeatsSpread: in the ramp the heartbeat sweep paces itself by
// the slots started so far, so 10 connections up out of 100 slots send
// about one heartbeat per tenth of their interval, not all ten in the first
// tenth (a sweep over all 100 slots at 100 per interval did that, and with
// every worker in step the whole run's heartbeat rate arrived in bursts).
func TestRampHeartbeatsSpread(t *testing.T) {
	const slots, up = 100, 10
	e := &engine{spec: &childSpec{}, conns: make([]conn, slots), errors: map[string]int64{},
		hists: map[string]sparseHist{}, extra: map[string]int64{}, rng: 1, now: time.Now().UnixNano(),
		hbInterval: int64(time.Second), phaseDone: true, cc: up}
	for i := 0; i < up; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[1])
		e.conns[i] = conn{fd: int32(fds[0]), state: stUp}
		defer e.closeFD(&e.conns[i], false)
	}
	var perTick []int64
	for k := 0; k < 20; k++ { // two intervals in ticks of 100 ms
		before := e.hbSent
		e.now += int64(100 * time.Millisecond)
		e.dt = int64(100 * time.Millisecond)
		e.tick()
		perTick = append(perTick, e.hbSent-before)
		for i := 0; i < up; i++ {
			e.conns[i].hbAt = 0 // as if the PONG came back
		}
	}
	if e.hbSent < 2*up-2 || e.hbSent > 2*up+2 {
		t.Errorf("%d heartbeats in two intervals from %d connections (per tick %v)", e.hbSent, up, perTick)
	}
	for k, n := range perTick {
		if n > 2 {
			t.Fatalf("tick %d sent %d heartbeats (per tick %v): bunched, not spread over the interval", k, n, perTick)
		}
	}
	// After the ramp every slot is swept: the interval's rate covers all n.
	e.rampDone = true
	before := e.hbSent
	for k := 0; k < 10; k++ {
		e.now += int64(100 * time.Millisecond)
		e.tick()
		for i := 0; i < up; i++ {
			e.conns[i].hbAt = 0
		}
	}
	if got := e.hbSent - before; got < up-1 || got > up+1 {
		t.Errorf("after the ramp: %d heartbeats in one interval from %d connections", got, up)
	}
}
