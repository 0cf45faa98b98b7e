package loadtest

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/client"
)

// Config is one invocation of the load tool. DefaultConfig gives the values
// the flags default to; Bind registers the flags.
type Config struct {
	Target       string        // host:port of the gateway (ignored with Floor)
	Admin        string        // host:port of the gateway's admin server ("" = don't read /metrics)
	AdminEvery   time.Duration // how often /metrics is read during the run (at least 1s)
	Conns        int           // connections to open
	Rate         float64       // connections opened per second over all workers (0 = as fast as possible)
	Duration     time.Duration // bound of one leg (the run, or each of floor and gateway with CompareFloor)
	Scenarios    []string      // see scenario.go; "idle" when empty
	JSON         string        // write the JSON report here
	HTML         string        // write the HTML report here
	Floor        bool          // target the tool's own epoll floor server instead of a gateway
	CompareFloor bool          // run the floor leg, then the gateway leg, and give ratios
	AllowRemote  bool          // permit non-loopback targets
	Sources      []netip.Addr  // source addresses, round-robin per connection (empty = the kernel's choice)
	Procs        int           // client worker processes (0 = enough for PerProc)
	PerProc      int           // connections per client worker process at most
	Keys         string        // gateway key file to mint tokens with
	Heartbeat    time.Duration // heartbeat interval in steady state (clamped to the server's policy)
	Storm        time.Duration // heartbeat interval of the heartbeat-storm scenario
	RPCRate      float64       // calls per second over all connections (rpc scenario)
	Method       string        // method called by the rpc scenario
	ShakeRate    float64       // shakes per second over all connections (shake, open scenarios)
	CallBody     string        // request body text of the rpc and overload scenarios ("" = RPCBody zero bytes)
	Mix          []mixEntry    // overload: methods and weights
	Steps        []rateStep    // overload: call rate steps from the steady state
	Settle       time.Duration // overload: per step, latency and user figures also from this far in
	RPCBody      int           // request body bytes of the rpc scenario
	SlowFrac     float64       // fraction of connections that stop reading (slow scenario)
	SlowBody     int           // body bytes of each echo call a slow consumer sends
	SlowInterval time.Duration // how often each slow consumer sends one
	Timeout      time.Duration // connect, auth, pong and call deadline
	Inflight     int           // connects in flight per worker at most
	MaxFail      float64       // fraction of conns allowed to fail before the exit code is 1
	UIDBase      uint64        // first user id; connection i authenticates as UIDBase+i
	Quiet        bool          // no live progress line even on a terminal
	WS           bool          // connect with a WebSocket upgrade (GET /ws), frames in binary messages
	Encrypt      bool          // HELLO handshake (Noise NK) and sealed records
	ServerKey    string        // --encrypt: the server key pin (default: the active key of <data>/server-keys.json)

	// Fleet (docs/fleet.md): Targets spreads first connects round-robin
	// over several gateway hosts (the seeds); FleetPins verifies the node
	// lists in AUTH_OK and GOAWAY 3014; Reconnect reconnects dropped
	// connections, to the newest verified list's hosts when there is one,
	// and reports the reconnect time (drop to AUTH_OK).
	Targets   []string
	FleetPins []string
	Reconnect bool

	// ChildCommand is the argv that starts this binary as a worker; the
	// default re-executes os.Executable() with "loadtest". Tests leave it.
	ChildCommand []string
}

// DefaultConfig returns the flag defaults: idle with 30 s heartbeats, a ramp
// of 2,000 connections per second, 30 s, and the default data dir's key file.
func DefaultConfig() Config {
	return Config{
		Target:       "127.0.0.1:7100",
		Conns:        1000,
		Rate:         2000,
		Duration:     30 * time.Second,
		PerProc:      15000,
		Keys:         auth.KeyFile(auth.DefaultDataDir()),
		Heartbeat:    30 * time.Second,
		Storm:        time.Second,
		RPCRate:      1000,
		Method:       "echo",
		ShakeRate:    1000,
		Mix:          []mixEntry{{"sleep.hi", 1}, {"sleep.lo", 4}},
		Settle:       5 * time.Second,
		RPCBody:      16,
		SlowFrac:     0.1,
		SlowBody:     16 << 10,
		SlowInterval: 100 * time.Millisecond,
		Timeout:      10 * time.Second,
		Inflight:     256,
		MaxFail:      0.01,
		UIDBase:      1_000_000,
	}
}

// Bind registers the tool's flags on fs, writing into c.
func (c *Config) Bind(fs *flag.FlagSet) {
	fs.StringVar(&c.Target, "target", c.Target, "gateway `host:port` to load (loopback only unless --allow-remote)")
	fs.StringVar(&c.Admin, "admin", c.Admin, "gateway admin `host:port`; its /metrics gives the gateway's memory and CPU")
	fs.DurationVar(&c.AdminEvery, "admin-every", c.AdminEvery, "how often --admin's /metrics is read during the run (default and minimum 1s); a gateway with many --workers merges every worker's page on each read (~0.2 s of CPU at 60 workers), so slow it down for such runs")
	fs.IntVar(&c.Conns, "conns", c.Conns, "connections to open and hold")
	fnVar(fs, "rate", "connections opened per second, e.g. 5000 or 5000/s; 0 = as fast as possible", func() string { return strconv.FormatFloat(c.Rate, 'g', -1, 64) }, func(s string) error {
		v, err := parseRate(s)
		c.Rate = v
		return err
	})
	fs.DurationVar(&c.Duration, "duration", c.Duration, "bound of the run (of each leg with --compare-floor), ramp included")
	fnVar(fs, "scenario", "comma-separated scenarios: "+strings.Join(scenarioNames(), ", ")+" (default idle)", func() string { return strings.Join(c.Scenarios, ",") }, func(s string) error {
		c.Scenarios = nil
		for _, n := range strings.Split(s, ",") {
			if n = strings.TrimSpace(n); n != "" {
				c.Scenarios = append(c.Scenarios, n)
			}
		}
		return nil
	})
	fs.StringVar(&c.JSON, "json", c.JSON, "write the JSON report to `FILE` (fields in docs/loadtest.md)")
	fs.StringVar(&c.HTML, "html", c.HTML, "write a self-contained HTML report with time-series plots to `FILE`")
	fs.BoolVar(&c.Floor, "floor", c.Floor, "target the tool's own minimal epoll server and measure the host's floor")
	fs.BoolVar(&c.CompareFloor, "compare-floor", c.CompareFloor, "run the same load against the floor, then the gateway, and report ratios")
	fs.BoolVar(&c.AllowRemote, "allow-remote", c.AllowRemote, "allow a non-loopback --target")
	fnVar(fs, "sources", "source addresses, a range 127.0.0.2-127.0.0.80 or a comma list; 'none' lets the kernel choose (default 127.0.0.2-127.0.0.80 for a 127.x target)", c.sourcesString, func(s string) error {
		v, err := parseSources(s)
		c.Sources = v
		if c.Sources == nil {
			c.Sources = []netip.Addr{}
		}
		return err
	})
	fs.IntVar(&c.Procs, "procs", c.Procs, "client worker processes (0 = conns / per-proc, rounded up)")
	fs.IntVar(&c.PerProc, "per-proc", c.PerProc, "connections per worker process at most (the file limit caps it)")
	fs.StringVar(&c.Keys, "keys", c.Keys, "gateway key `FILE` to mint tokens with")
	fs.DurationVar(&c.Heartbeat, "heartbeat", c.Heartbeat, "heartbeat interval (clamped to the server's max interval)")
	fs.DurationVar(&c.Storm, "storm-interval", c.Storm, "heartbeat interval of every connection in the heartbeat scenario")
	fnVar(fs, "rpc-rate", "calls per second over all connections in the rpc scenario, e.g. 2000/s", func() string { return strconv.FormatFloat(c.RPCRate, 'g', -1, 64) }, func(s string) error {
		v, err := parseRate(s)
		c.RPCRate = v
		return err
	})
	fs.StringVar(&c.Method, "method", c.Method, "method the rpc scenario calls")
	fnVar(fs, "shake-rate", "SHAKEs per second over all connections in the shake and open scenarios", func() string { return strconv.FormatFloat(c.ShakeRate, 'g', -1, 64) }, func(s string) error {
		v, err := parseRate(s)
		c.ShakeRate = v
		return err
	})
	fs.IntVar(&c.RPCBody, "rpc-body", c.RPCBody, "request body bytes of the rpc scenario")
	fs.StringVar(&c.CallBody, "call-body", c.CallBody, "request body `TEXT` of the rpc and overload scenarios, instead of --rpc-body zero bytes (e.g. 5 for the echo backend's sleep methods: 5 ms)")
	fnVar(fs, "mix", "overload: methods and weights, `method[:weight],…`", c.mixString, func(s string) error {
		v, err := parseMix(s)
		c.Mix = v
		return err
	})
	fnVar(fs, "steps", "overload: call rate steps from the steady state, `name:duration:rate,…` (e.g. unloaded:15s:1000,overload:20s:9000,recovery:15s:1000; default one step at --rpc-rate)", c.stepsString, func(s string) error {
		v, err := parseSteps(s)
		c.Steps = v
		return err
	})
	fs.DurationVar(&c.Settle, "settle", c.Settle, "overload: per step, settled latency and user figures leave out this much of the step's start")
	fs.Float64Var(&c.SlowFrac, "slow-frac", c.SlowFrac, "fraction of connections that stop reading in the slow scenario")
	fs.IntVar(&c.SlowBody, "slow-body", c.SlowBody, "body bytes of each echo call a slow consumer sends")
	fs.DurationVar(&c.SlowInterval, "slow-interval", c.SlowInterval, "how often each slow consumer sends a call")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "connect, auth, pong and call deadline")
	fs.IntVar(&c.Inflight, "inflight", c.Inflight, "connects in flight per worker process at most")
	fs.Float64Var(&c.MaxFail, "max-fail", c.MaxFail, "fraction of connections that may fail before the exit code is 1")
	fs.Uint64Var(&c.UIDBase, "uid-base", c.UIDBase, "first user id; connection i authenticates as uid-base+i")
	fs.BoolVar(&c.Quiet, "quiet", c.Quiet, "no live progress line")
	fs.BoolVar(&c.WS, "ws", c.WS, "WebSocket clients: upgrade with GET /ws on --target, then each frame in a masked binary message (the floor leg stays TCP)")
	fnVar(fs, "targets", "gateway hosts (seeds), comma-separated host:port: first connects go round-robin over them (default --target)", func() string { return strings.Join(c.Targets, ",") }, func(s string) error {
		c.Targets = splitList(s)
		return nil
	})
	fnVar(fs, "fleet-pins", "fleet node-list pins, comma-separated <id>:<64 hex> (`longlink keys --fleet`): verified lists from AUTH_OK and GOAWAY 3014 choose where --reconnect goes", func() string { return strings.Join(c.FleetPins, ",") }, func(s string) error {
		c.FleetPins = splitList(s)
		return nil
	})
	fs.BoolVar(&c.Reconnect, "reconnect", c.Reconnect, "reconnect dropped connections (0.25-0.75 s jittered backoff, doubling to 30 s; at once after a GOAWAY 3014 with a list), following the node lists; the summary and JSON give the reconnect time")
	fs.BoolVar(&c.Encrypt, "encrypt", c.Encrypt, "encrypted clients: HELLO (Noise NK) with AUTH in the first flight, then sealed records (the floor leg stays plain)")
	fs.StringVar(&c.ServerKey, "server-key", c.ServerKey, "with --encrypt: the gateway key `PIN` (id:hex, from `longlink keys`; default: the active key of <data>/server-keys.json)")
}

// parseRate accepts "5000", "5000/s" and "300/m".
func parseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	div := 1.0
	if i := strings.IndexByte(s, '/'); i >= 0 {
		switch s[i+1:] {
		case "s", "sec":
		case "m", "min":
			div = 60
		default:
			return 0, fmt.Errorf("rate %q: unit must be /s or /m", s)
		}
		s = s[:i]
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("rate %q: want a number of connections or calls per second", s)
	}
	return v / div, nil
}

// parseSources accepts "none", "a-b" ranges of IPv4 addresses and comma lists
// of addresses or ranges.
func parseSources(s string) ([]netip.Addr, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []netip.Addr
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := netip.ParseAddr(lo)
		if err != nil {
			return nil, fmt.Errorf("sources: %v", err)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(hi)
		if err != nil {
			return nil, fmt.Errorf("sources: %v", err)
		}
		if !a.Is4() || !b.Is4() || b.Less(a) {
			return nil, fmt.Errorf("sources: range %q must be IPv4, low-high", part)
		}
		for x := a; ; x = x.Next() {
			out = append(out, x)
			if len(out) > 1<<16 {
				return nil, errors.New("sources: more than 65536 addresses")
			}
			if x == b {
				break
			}
		}
	}
	return out, nil
}

// normalize fills derived defaults and checks the configuration.
func (c *Config) normalize() error {
	if c.Conns <= 0 {
		return errors.New("--conns must be positive")
	}
	if c.Duration <= 0 {
		return errors.New("--duration must be positive: every run is bounded")
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = []string{"idle"}
	}
	if err := c.normalizeEncrypt(); err != nil {
		return err
	}
	for _, n := range c.Scenarios {
		d, ok := scenarios[n]
		if !ok {
			return fmt.Errorf("unknown scenario %q (have %s)", n, strings.Join(scenarioNames(), ", "))
		}
		if d.unavailable != "" {
			return fmt.Errorf("scenario %q is not available yet: %s", n, d.unavailable)
		}
	}
	if c.PerProc <= 0 {
		c.PerProc = 15000
	}
	if lim := fileLimit(); lim > 0 && uint64(c.PerProc)+200 > lim {
		return fmt.Errorf("--per-proc %d does not fit the open-file limit %d (each connection is one file); use at most %d", c.PerProc, lim, lim-200)
	}
	if c.Procs <= 0 {
		c.Procs = (c.Conns + c.PerProc - 1) / c.PerProc
	}
	if c.Procs > c.Conns {
		c.Procs = c.Conns
	}
	if (c.Conns+c.Procs-1)/c.Procs > c.PerProc {
		return fmt.Errorf("--procs %d gives more than --per-proc %d connections each; raise --procs", c.Procs, c.PerProc)
	}
	if c.Heartbeat <= 0 {
		return errors.New("--heartbeat must be positive")
	}
	if c.Storm <= 0 {
		c.Storm = time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Inflight <= 0 {
		c.Inflight = 256
	}
	if c.SlowFrac < 0 || c.SlowFrac > 1 {
		return errors.New("--slow-frac must be within 0..1")
	}
	for _, n := range c.Scenarios {
		if n == "overload" && len(c.Steps) == 0 {
			c.Steps = []rateStep{{Name: "steady", Dur: c.Duration, Rate: c.RPCRate}}
		}
	}
	if len(c.Steps) > 0 && len(c.Mix) == 0 {
		return errors.New("--steps needs a --mix")
	}
	if c.RPCBody < 0 || c.SlowBody < 0 {
		return errors.New("body sizes must not be negative")
	}
	if len(c.Targets) > 0 {
		c.Target = c.Targets[0]
	}
	if !c.Floor || c.CompareFloor {
		for _, t := range append([]string{c.Target}, c.Targets...) {
			host, _, err := net.SplitHostPort(t)
			if err != nil {
				return fmt.Errorf("--target %q: %v", t, err)
			}
			if !c.AllowRemote && !isLoopbackHost(host) {
				return fmt.Errorf("--target %q is not a loopback address; pass --allow-remote to load a remote host", t)
			}
		}
	}
	for _, p := range c.FleetPins {
		if _, err := client.ParseFleetPin(p); err != nil {
			return fmt.Errorf("--fleet-pins: %v", err)
		}
	}
	if len(c.FleetPins) > 0 && (c.Floor || c.WS || c.Encrypt) {
		return errors.New("--fleet-pins: plain TCP gateway legs only (not with --floor, --ws or --encrypt)")
	}
	if c.Admin != "" {
		host, _, err := net.SplitHostPort(c.Admin)
		if err != nil {
			return fmt.Errorf("--admin %q: %v", c.Admin, err)
		}
		if !c.AllowRemote && !isLoopbackHost(host) {
			return fmt.Errorf("--admin %q is not a loopback address; pass --allow-remote", c.Admin)
		}
	}
	if c.Sources == nil && targetIs127(c) {
		c.Sources, _ = parseSources("127.0.0.2-127.0.0.80")
	}
	if len(c.Sources) > 0 {
		ports := portRange()
		perSource := (c.Conns + len(c.Sources) - 1) / len(c.Sources)
		if ports > 0 && perSource > ports*95/100 {
			return fmt.Errorf("%d connections over %d source addresses is %d per address, more than the %d ephemeral ports (net.ipv4.ip_local_port_range) allow: widen --sources or the port range", c.Conns, len(c.Sources), perSource, ports)
		}
	}
	if len(c.ChildCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("cannot find own executable to start workers: %v", err)
		}
		c.ChildCommand = []string{exe, "loadtest"}
	}
	return nil
}

func targetIs127(c *Config) bool {
	if c.Floor && !c.CompareFloor {
		return true
	}
	host, _, err := net.SplitHostPort(c.Target)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host == "localhost"
	}
	return a.Is4() && a.As4()[0] == 127
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// params renders the configuration for the report, one entry per field
// (durations and lists in their flag form), so a report says how it was made.
func (c Config) params() map[string]string {
	out := map[string]string{}
	v := reflect.ValueOf(c)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if f.Name == "ChildCommand" || !f.IsExported() {
			continue
		}
		out[f.Name] = fmt.Sprint(v.Field(i).Interface())
	}
	return out
}

// fnValue is a flag whose value a function parses and another prints (so
// `longlink config print` shows it, unlike flag.Func's).
type fnValue struct {
	get func() string
	set func(string) error
}

func (v fnValue) String() string {
	if v.get == nil {
		return ""
	}
	return v.get()
}
func (v fnValue) Set(s string) error { return v.set(s) }

func fnVar(fs *flag.FlagSet, name, usage string, get func() string, set func(string) error) {
	fs.Var(fnValue{get, set}, name, usage)
}

func (c *Config) sourcesString() string {
	if c.Sources == nil {
		return "" // the default for the target
	}
	if len(c.Sources) == 0 {
		return "none"
	}
	out := make([]string, len(c.Sources))
	for i, a := range c.Sources {
		out[i] = a.String()
	}
	return strings.Join(out, ",")
}

func (c *Config) mixString() string {
	out := make([]string, len(c.Mix))
	for i, m := range c.Mix {
		out[i] = m.Method + ":" + strconv.FormatFloat(m.Weight, 'g', -1, 64)
	}
	return strings.Join(out, ",")
}

func (c *Config) stepsString() string {
	out := make([]string, len(c.Steps))
	for i, st := range c.Steps {
		out[i] = st.Name + ":" + st.Dur.String() + ":" + strconv.FormatFloat(st.Rate, 'g', -1, 64)
	}
	return strings.Join(out, ",")
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
