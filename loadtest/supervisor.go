package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"
)

// child is one worker process as the supervisor sees it.
type child struct {
	id     int
	role   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	pid    int
	latest *childStats   // last stats line (cumulative counters)
	ready  chan struct{} // closed on the first line
	done   chan struct{} // closed when stdout ends
	once   sync.Once
}

// leg is one run against one target (the floor or the gateway).
type leg struct {
	cfg      *Config
	kind     string // "gateway" or "floor"
	target   string // ip:port
	targets  []string
	log      io.Writer
	progress bool      // a live line on a terminal
	logLines bool      // not a terminal (CI, a log file): a plain progress line every logEvery
	lastLine time.Time // when the last plain progress line went out
	http     *http.Client

	clients, floors []*child

	mu       sync.Mutex
	cum      map[string]*hdr.Histogram // whole leg
	steady   map[string]*hdr.Histogram // since steadyAt
	interval map[string]*hdr.Histogram // since the last sample
	fatal    error
	policy   *policySeen

	start, steadyAt, deadline, end time.Time
	hooks                          []parentHook

	series               []Sample
	base                 counters // counters at steadyAt
	baseSrv, lastSrv     serverUsage
	prevC                counters
	prevSrv              serverUsage
	prevSrvT             time.Time // when prevSrv was read (the last time /metrics was due)
	prevT                time.Time
	prevTool             float64
	pushSent             bool
	peakOpen             int64
	lastTool             procUsage
	toolAtSteady         procUsage
	floorPushCPUAtSteady int64
	stopping             bool
	interrupted          bool
	serverProcs          int
	metricsErr           string
	steadyEnd            time.Time
	finalC               counters
	finalTimes           map[string]int64
	finalErrors          map[string]int64
	firstSrv             serverUsage
	preSrv               serverUsage // before the ramp: the server's baseline
	// The steady-state CPU window runs between two good reads of the
	// server's usage (a scrape of a busy many-worker gateway can time out):
	// when and with which counters baseSrv and lastSrv were taken.
	baseSrvAt, lastSrvAt time.Time
	baseSrvC, lastSrvC   counters
	// overload scenario: when each step began, per-step histograms
	ovMarks []ovMark
	ovHists map[string]*hdr.Histogram
}

// counters is the sum of every worker's latest cumulative counters.
type counters map[string]int64

// Main runs the tool with cfg, writes the reports and returns the exit code.
// SIGINT and SIGTERM stop the run (and every worker) early.
func Main(cfg Config) int {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	rep, err := Run(ctx, cfg, os.Stderr)
	if rep != nil {
		rep.WriteSummary(os.Stdout)
		if cfg.JSON != "" {
			if werr := rep.WriteJSONFile(cfg.JSON); werr != nil {
				fmt.Fprintln(os.Stderr, "loadtest:", werr)
				return 1
			}
		}
		if cfg.HTML != "" {
			if werr := rep.WriteHTMLFile(cfg.HTML); werr != nil {
				fmt.Fprintln(os.Stderr, "loadtest:", werr)
				return 1
			}
		}
	}
	switch {
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		return 2
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "loadtest: interrupted")
		return 130
	case err != nil:
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		return 1
	case rep.Failure != "":
		fmt.Fprintln(os.Stderr, "loadtest: FAILED:", rep.Failure)
		return 1
	}
	return 0
}

var errUsage = errors.New("usage")

// Run executes the legs cfg asks for and returns the report (partial when
// interrupted or failed mid-way).
func Run(ctx context.Context, cfg Config, log io.Writer) (*Report, error) {
	if err := cfg.normalize(); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	raiseFileLimit()
	if cfg.CompareFloor {
		floor, err := runLeg(ctx, &cfg, "floor", log)
		if err != nil || ctx.Err() != nil {
			return floor, err
		}
		gw, err := runLeg(ctx, &cfg, "gateway", log)
		if gw != nil {
			gw.Floor = floor
			gw.computeRatios()
		}
		return gw, err
	}
	kind := "gateway"
	if cfg.Floor {
		kind = "floor"
	}
	return runLeg(ctx, &cfg, kind, log)
}

func runLeg(ctx context.Context, cfg *Config, kind string, log io.Writer) (*Report, error) {
	l := &leg{
		cfg: cfg, kind: kind, log: log,
		http:     &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		cum:      map[string]*hdr.Histogram{},
		steady:   map[string]*hdr.Histogram{},
		interval: map[string]*hdr.Histogram{},
		ovHists:  map[string]*hdr.Histogram{},
	}
	l.progress = !cfg.Quiet && isTerminal(os.Stderr)
	l.logLines = !cfg.Quiet && !l.progress
	defer l.killAll()
	if kind == "floor" {
		if err := l.startFloor(ctx); err != nil {
			return nil, err
		}
	} else {
		addr, err := net.ResolveTCPAddr("tcp", cfg.Target)
		if err != nil {
			return nil, fmt.Errorf("target %s: %v", cfg.Target, err)
		}
		if !cfg.AllowRemote && !addr.IP.IsLoopback() {
			return nil, fmt.Errorf("%w: target %s resolves to non-loopback %s", errUsage, cfg.Target, addr.IP)
		}
		l.target = addr.String()
		for _, t := range cfg.Targets {
			a, err := net.ResolveTCPAddr("tcp", t)
			if err != nil {
				return nil, fmt.Errorf("target %s: %v", t, err)
			}
			if !cfg.AllowRemote && !a.IP.IsLoopback() {
				return nil, fmt.Errorf("%w: target %s resolves to non-loopback %s", errUsage, t, a.IP)
			}
			l.targets = append(l.targets, a.String())
		}
	}
	for _, n := range cfg.Scenarios {
		if d := scenarios[n]; d.parent != nil {
			l.hooks = append(l.hooks, d.parent(l))
		}
	}
	// The server's baseline (runtime, buffers, tables) before any client
	// connects, so memory per connection can be given as growth too.
	l.preSrv = l.serverUsage(ctx, nil)
	if err := l.startClients(); err != nil {
		return nil, err
	}
	err := l.loop(ctx)
	return l.report(), err
}

func (l *leg) logf(format string, args ...any) {
	if l.progress {
		fmt.Fprint(l.log, "\r\033[K")
	}
	fmt.Fprintf(l.log, "loadtest: "+format+"\n", args...)
}

// spawn starts one worker process and its stdout reader.
func (l *leg) spawn(role string, id int, spec *childSpec) (*child, error) {
	cmd := exec.Command(l.cfg.ChildCommand[0], l.cfg.ChildCommand[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"="+role)
	cmd.Stderr = l.log
	// Own process group (a terminal's SIGINT reaches only the supervisor,
	// which then ends the group), and die with the supervisor.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s worker: %v", role, err)
	}
	c := &child{id: id, role: role, cmd: cmd, stdin: stdin, pid: cmd.Process.Pid, ready: make(chan struct{}), done: make(chan struct{})}
	spec.ID, spec.Role = id, role
	b, _ := json.Marshal(spec)
	if _, err := stdin.Write(append(b, '\n')); err != nil {
		return c, fmt.Errorf("%s worker %d: %v", role, id, err)
	}
	go l.readChild(c, stdout)
	return c, nil
}

func (l *leg) readChild(c *child, r io.Reader) {
	defer close(c.done)
	defer c.once.Do(func() { close(c.ready) })
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			var st childStats
			if json.Unmarshal(line, &st) == nil {
				l.absorb(c, &st)
				c.once.Do(func() { close(c.ready) })
			}
		}
		if err != nil {
			break
		}
	}
	_ = c.cmd.Wait()
	l.mu.Lock()
	if !l.stopping && l.fatal == nil {
		l.fatal = fmt.Errorf("%s worker %d (pid %d) exited early: %v", c.role, c.id, c.pid, c.cmd.ProcessState)
	}
	l.mu.Unlock()
}

func (l *leg) absorb(c *child, st *childStats) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st.Err != "" && l.fatal == nil {
		l.fatal = fmt.Errorf("%s worker %d: %s", c.role, c.id, st.Err)
	}
	if st.Policy != nil && l.policy == nil {
		l.policy = st.Policy
	}
	if st.C != nil || c.latest == nil {
		c.latest = st
	} else {
		c.latest.RampDone = c.latest.RampDone || st.RampDone
	}
	for name, p := range st.Hists {
		for _, m := range []map[string]*hdr.Histogram{l.cum, l.interval} {
			if m[name] == nil {
				m[name] = newHist()
			}
			mergePairs(m[name], p)
		}
		if !l.steadyAt.IsZero() {
			if l.steady[name] == nil {
				l.steady[name] = newHist()
			}
			mergePairs(l.steady[name], p)
		}
	}
}

// startFloor starts the floor servers on one SO_REUSEPORT port.
func (l *leg) startFloor(ctx context.Context) error {
	// Reserve a port: bound with SO_REUSEPORT but not listening, so the
	// servers can join it and it never takes a connection itself.
	rfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	_ = unix.SetsockoptInt(rfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	_ = unix.SetsockoptInt(rfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	if err := unix.Bind(rfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return fmt.Errorf("floor: reserve port: %v", err)
	}
	sa, err := unix.Getsockname(rfd)
	if err != nil {
		return err
	}
	port := sa.(*unix.SockaddrInet4).Port
	l.target = fmt.Sprintf("127.0.0.1:%d", port)
	n := (l.cfg.Conns + l.cfg.PerProc - 1) / l.cfg.PerProc
	if n > 1 {
		n++ // SO_REUSEPORT spreads within a few percent; leave room
	}
	l.serverProcs = n
	for i := 0; i < n; i++ {
		c, err := l.spawn("floor", i, &childSpec{Listen: l.target, MaxConns: l.cfg.PerProc})
		if c != nil {
			l.floors = append(l.floors, c)
		}
		if err != nil {
			return err
		}
	}
	for _, c := range l.floors {
		select {
		case <-c.ready:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Second):
			return fmt.Errorf("floor server %d did not start", c.id)
		}
	}
	l.mu.Lock()
	err = l.fatal
	l.mu.Unlock()
	return err
}

func (l *leg) startClients() error {
	cfg := l.cfg
	var sources []string
	for _, s := range cfg.Sources {
		sources = append(sources, s.String())
	}
	first := 0
	for i := 0; i < cfg.Procs; i++ {
		n := cfg.Conns / cfg.Procs
		if i < cfg.Conns%cfg.Procs {
			n++
		}
		spec := &childSpec{
			Target: l.target, Targets: l.targets, FleetPins: cfg.FleetPins, Reconnect: cfg.Reconnect && l.kind != "floor", Floor: l.kind == "floor", WS: cfg.WS && l.kind != "floor", Encrypt: cfg.Encrypt && l.kind != "floor", ServerKey: cfg.ServerKey, Sources: sources, First: first, Conns: n,
			Rate: cfg.Rate / float64(cfg.Procs), Inflight: cfg.Inflight,
			Heartbeat: int64(cfg.Heartbeat), Storm: int64(cfg.Storm), Timeout: int64(cfg.Timeout),
			Scenarios: cfg.Scenarios, RPCRate: cfg.RPCRate / float64(cfg.Procs), Method: cfg.Method,
			ShakeRate: cfg.ShakeRate / float64(cfg.Procs), CallBody: cfg.CallBody, Mix: cfg.Mix, Settle: int64(cfg.Settle),
			RPCBody: cfg.RPCBody, SlowFrac: cfg.SlowFrac, SlowBody: cfg.SlowBody, SlowInterval: int64(cfg.SlowInterval),
			Keys: cfg.Keys, UIDBase: cfg.UIDBase, HardStop: int64(cfg.Duration + 10*time.Second),
		}
		first += n
		c, err := l.spawn("client", i, spec)
		if c != nil {
			l.clients = append(l.clients, c)
		}
		if err != nil {
			return err
		}
	}
	// Every worker is up (keys loaded, epoll made): start them together.
	for _, c := range l.clients {
		select {
		case <-c.ready:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("client worker %d did not start", c.id)
		}
	}
	l.mu.Lock()
	err := l.fatal
	l.mu.Unlock()
	if err != nil {
		return err
	}
	l.start = time.Now()
	l.deadline = l.start.Add(cfg.Duration)
	l.broadcast(l.clients, "start")
	return nil
}

func (l *leg) broadcast(cs []*child, cmd string) {
	for _, c := range cs {
		_, _ = io.WriteString(c.stdin, cmd+"\n")
	}
}

// sum adds every worker's latest counters (both roles).
func (l *leg) sum() (counters, map[string]int64, map[string]int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := counters{}
	times := map[string]int64{}
	errs := map[string]int64{}
	allRamped := len(l.clients) > 0
	for _, ch := range append(append([]*child(nil), l.clients...), l.floors...) {
		st := ch.latest
		if st == nil {
			if ch.role == "client" {
				allRamped = false
			}
			continue
		}
		if ch.role == "client" && !st.RampDone {
			allRamped = false
		}
		for k, v := range st.C {
			c[k] += v
		}
		for k, v := range st.Errors {
			errs[k] += v
		}
		for k, v := range st.Times {
			old, ok := times[k]
			switch {
			case !ok:
				times[k] = v
			case strings.HasSuffix(k, "_start") && v < old:
				times[k] = v
			case strings.HasSuffix(k, "_end") && v > old:
				times[k] = v
			}
		}
	}
	return c, times, errs, allRamped
}

// serverUsage samples the target: the gateway's /metrics, or the floor
// processes' /proc.
func (l *leg) serverUsage(ctx context.Context, c counters) serverUsage {
	if l.kind == "floor" {
		u := serverUsage{OK: true, Conns: c["floor_conns"]}
		for _, f := range l.floors {
			if p, ok := readProc(f.pid); ok {
				u.CPU += p.CPU
				u.RSS += p.RSS
				u.Anon += p.Anon
			}
		}
		return u
	}
	if l.cfg.Admin == "" {
		return serverUsage{Conns: -1}
	}
	m, err := scrapeMetrics(ctx, l.http, l.cfg.Admin)
	if err != nil {
		if l.metricsErr == "" {
			l.logf("cannot read gateway metrics from --admin %s: %v", l.cfg.Admin, err)
		}
		l.metricsErr = err.Error()
		return serverUsage{Conns: -1}
	}
	return usageFromMetrics(m)
}

func (l *leg) toolUsage() procUsage {
	var u procUsage
	for _, c := range l.clients {
		if p, ok := readProc(c.pid); ok {
			u.CPU += p.CPU
			u.RSS += p.RSS
		}
	}
	return u
}

// loop supervises the leg until its deadline, an error or ctx ends it. It
// checks the workers four times a second and records a sample every second.
func (l *leg) loop(ctx context.Context) error {
	tk := time.NewTicker(250 * time.Millisecond)
	defer tk.Stop()
	l.prevT = l.start
	l.prevSrv = l.serverUsage(ctx, nil)
	l.prevSrvT = l.start
	l.firstSrv = l.prevSrv
	stopAt := l.deadline.Add(-100 * time.Millisecond)
	var err error
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			l.interrupted = true
		case <-tk.C:
		}
		now = time.Now()
		final := l.interrupted || !now.Before(stopAt)
		c, _, _, allRamped := l.sum()
		if l.steadyAt.IsZero() && allRamped && !final {
			l.mu.Lock()
			l.steadyAt = now
			l.mu.Unlock()
			l.base, l.baseSrv, l.toolAtSteady = c, l.serverUsage(ctx, c), l.toolUsage()
			l.baseSrvAt, l.baseSrvC = now, c
		}
		if final || now.Sub(l.prevT) >= time.Second-50*time.Millisecond {
			l.sample(ctx, now, final)
		}
		l.mu.Lock()
		err = l.fatal
		l.mu.Unlock()
		if err != nil || final {
			break
		}
		for _, h := range l.hooks {
			h.second(l, now)
		}
		if l.kind == "floor" && !l.pushSent && !l.steadyAt.IsZero() && slices.Contains(l.cfg.Scenarios, "push") {
			// The push scenario: the floor pushes at the gateway leg's
			// notify rate for the whole steady state, so both legs give
			// whole-process CPU per delivered push (like for like).
			l.pushSent = true
			rate := envOr("LONGLINK_PUSH_RATE", 20000) / float64(max(1, len(l.floors)))
			l.broadcast(l.floors, "push-rate "+strconv.FormatFloat(rate, 'f', -1, 64))
		}
		if l.kind == "floor" && !l.pushSent && !l.steadyAt.IsZero() &&
			(now.Sub(l.steadyAt) >= l.deadline.Sub(l.steadyAt)/2 || stopAt.Sub(now) < 1200*time.Millisecond) {
			// One round of pushed 16-byte writes from the floor servers,
			// timed by the servers themselves.
			l.pushSent = true
			l.broadcast(l.floors, "push")
		}
	}
	l.steadyEnd = time.Now()
	if l.progress {
		fmt.Fprint(l.log, "\r\033[K")
	}
	l.stopAll()
	l.end = time.Now()
	return err
}

// sample records one time-series point and detects the steady state.
// The gateway's /metrics is read when --admin-every is due (and at the
// end); other samples carry no server figures.
func (l *leg) sample(ctx context.Context, now time.Time, final bool) {
	c, times, errs, _ := l.sum()
	srv := serverUsage{Conns: -1} // not read this second
	scraped := l.kind == "floor" || final || now.Sub(l.prevSrvT) >= max(time.Second, l.cfg.AdminEvery)-50*time.Millisecond
	if scraped {
		srv = l.serverUsage(ctx, c)
	}
	tool := l.toolUsage()
	dt := now.Sub(l.prevT).Seconds()
	if dt <= 0 {
		dt = 1e-3
	}
	l.mu.Lock()
	iv := l.interval
	l.interval = map[string]*hdr.Histogram{}
	l.mu.Unlock()
	s := Sample{
		T:             now.Sub(l.start).Seconds(),
		Open:          c["open"],
		Established:   c["established"],
		Failed:        c["failed"],
		ConnectPerS:   float64(c["established"]-l.prevC["established"]) / dt,
		HeartbeatPerS: float64(c["pongs"]-l.prevC["pongs"]) / dt,
		RPCPerS:       float64(c["rpc_ok"]-l.prevC["rpc_ok"]) / dt,
		PushPerS:      float64(c["push_recv"]-l.prevC["push_recv"]) / dt,
		ShakePerS:     float64(c["shake_ok"]-l.prevC["shake_ok"]) / dt,
		OpenPerS:      float64(c["open_ok"]-l.prevC["open_ok"]) / dt,
		Latency:       map[string]Pct{},
		ServerRSS:     srv.RSS,
		ServerAnon:    srv.Anon,
		ServerConns:   srv.Conns,
		ToolRSS:       tool.RSS,
		ToolCPU:       (tool.CPU - l.prevTool) / dt,
	}
	cpuKnown := srv.OK && l.prevSrv.OK // two good reads in a row: a CPU rate between them
	if cpuKnown {
		s.ServerCPU = (srv.CPU - l.prevSrv.CPU) / max(1e-3, now.Sub(l.prevSrvT).Seconds())
	}
	for name, h := range iv {
		if !strings.HasPrefix(name, "ov:") { // per method in s.Methods
			s.Latency[name] = pctOf(h)
		}
	}
	l.overloadSample(&s, c, iv, dt)
	if c["open"] > l.peakOpen {
		l.peakOpen = c["open"]
	}
	l.series = append(l.series, s)
	l.prevC, l.prevT, l.prevTool = c, now, tool.CPU
	if scraped {
		l.prevSrv, l.prevSrvT = srv, now
	}
	l.lastTool = tool
	if srv.OK || !l.lastSrv.OK {
		// Keep the last good read: one timed-out scrape must not wipe the
		// leg's memory and CPU figures.
		l.lastSrv, l.lastSrvAt, l.lastSrvC = srv, now, c
	}
	if srv.OK && !l.baseSrv.OK && !l.steadyAt.IsZero() {
		// The read at the start of the steady state failed: start the CPU
		// window at this one.
		l.baseSrv, l.baseSrvAt, l.baseSrvC = srv, now, c
	}
	l.finalC, l.finalTimes, l.finalErrors = c, times, errs
	if l.progress || (l.logLines && now.Sub(l.lastLine) >= logEvery) {
		line := fmt.Sprintf("[%s] %4.0fs open %d/%d fail %d conn/s %.0f hb/s %.0f rpc/s %.0f",
			l.kind, s.T, s.Open, l.cfg.Conns, s.Failed, s.ConnectPerS, s.HeartbeatPerS, s.RPCPerS)
		if srv.OK {
			line += " | server rss " + mib(srv.RSS)
			if cpuKnown {
				line += fmt.Sprintf(" cpu %.2f", s.ServerCPU)
			}
		}
		line += fmt.Sprintf(" | tool rss %s", mib(tool.RSS))
		if l.steadyAt.IsZero() {
			line += " (ramp)"
		}
		if l.progress {
			fmt.Fprint(l.log, "\r\033[K"+line)
		} else {
			l.lastLine = now
			fmt.Fprintln(l.log, "loadtest: "+line)
		}
	}
}

// logEvery spaces the progress lines written when stderr is not a terminal.
const logEvery = 5 * time.Second

// stopAll asks every worker to stop, waits briefly for final stats, then
// kills whatever is left.
func (l *leg) stopAll() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.broadcast(l.clients, "stop")
	l.waitDone(l.clients, 5*time.Second)
	// Final counters from the clients' last lines.
	c, times, errs, _ := l.sum()
	l.finalC, l.finalTimes, l.finalErrors = c, times, errs
	l.broadcast(l.floors, "stop")
	l.waitDone(l.floors, 3*time.Second)
	l.killAll()
}

func (l *leg) waitDone(cs []*child, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for _, c := range cs {
		select {
		case <-c.done:
		case <-t.C:
			return
		}
	}
}

// killAll kills every worker's process group; safe to call twice.
func (l *leg) killAll() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	for _, c := range append(append([]*child(nil), l.clients...), l.floors...) {
		_ = syscall.Kill(-c.pid, syscall.SIGKILL)
		_ = c.stdin.Close()
	}
	for _, c := range append(append([]*child(nil), l.clients...), l.floors...) {
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
		}
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func mib(b int64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }
