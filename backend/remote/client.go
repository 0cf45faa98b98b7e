package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// Config configures a Client. Zero fields take the defaults noted.
type Config struct {
	Addrs []string // instances: host:port, or unix:/path (at most 64)

	Replicas      int           // points per instance on the hash ring (default 128)
	MaxAttempts   int           // attempts per call, the first included (default 2)
	RetryRatio    float64       // retries allowed as a fraction of calls (default 0.1)
	RetryBurst    int           // retries that may be banked (default 100)
	FailThreshold int           // consecutive system failures that eject an instance (default 3; refused connections eject at once)
	EjectBase     time.Duration // first ejection; doubles per consecutive ejection (default 1s)
	EjectMax      time.Duration // longest ejection (default 30s)
	ProbeTimeout  time.Duration // a probe's deadline (default 1s)
	MaxMethods    int           // distinct method labels before "other" (default 64)

	// Auth authenticates every call (required: the logic refuses callers
	// without the shared secret).
	Auth ClientAuth

	Logger      *slog.Logger
	DialOptions []grpc.DialOption
}

// ParseURL parses "grpc://host:port[,host:port…]" into addresses.
func ParseURL(u string) ([]string, error) {
	rest, ok := strings.CutPrefix(u, "grpc://")
	if !ok || rest == "" {
		return nil, fmt.Errorf("remote: backend %q: want grpc://host:port[,host:port…]", u)
	}
	var addrs []string
	for _, a := range strings.Split(rest, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("remote: backend %q names no instance", u)
	}
	return addrs, nil
}

// Client is a pool of logic instances; it implements backend.Backend.
type Client struct {
	cfg    Config
	log    *slog.Logger
	insts  []*instance
	ring   []point
	tokens atomic.Int64 // banked retries, in thousandths
	stop   chan struct{}
	wg     sync.WaitGroup

	methodsMu sync.RWMutex
	methods   map[string]bool

	// mixed is set while the instances announce different store ids: every
	// call is then refused (a user's data would be split between stores).
	mixed   atomic.Pointer[error]
	storeMu sync.Mutex
	checked chan struct{} // closed after the first store check of every instance

	m clientMetrics
}

type instance struct {
	idx       int
	addr      string
	cc        *grpc.ClientConn
	cli       pb.LogicServiceClient
	ejected   atomic.Bool
	until     atomic.Int64 // unix ns the ejection ends (then probed)
	fails     atomic.Int32 // consecutive system failures
	ejections atomic.Int32 // consecutive ejections (backoff exponent)
	readmit   atomic.Int64 // unix ns of the last readmission

	// The store id the instance announced (logic.info): idOK is set once
	// it is known; an instance is used only after that.
	idOK    atomic.Bool
	storeID atomic.Pointer[string]
}

type point struct {
	h uint64
	i int
}

type clientMetrics struct {
	calls, logical, final *prometheus.CounterVec
	system                *prometheus.CounterVec
	latency               *prometheus.HistogramVec
	ejections             *prometheus.CounterVec
	up                    *prometheus.GaugeVec
	retries, exhausted    prometheus.Counter
	mixed                 prometheus.Gauge
	all                   []prometheus.Collector
}

// ErrNoInstance is the system failure when every instance was tried.
var ErrNoInstance = backend.Unavailable("remote: no logic instance available")

// NewClient dials the instances (lazily: a down instance does not fail this)
// and starts the prober.
func NewClient(cfg Config) (*Client, error) {
	if len(cfg.Addrs) == 0 || len(cfg.Addrs) > 64 {
		return nil, fmt.Errorf("remote: %d instances; want 1 to 64", len(cfg.Addrs))
	}
	defi := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defi(&cfg.Replicas, 128)
	defi(&cfg.MaxAttempts, 2)
	defi(&cfg.RetryBurst, 100)
	defi(&cfg.FailThreshold, 3)
	defi(&cfg.MaxMethods, 64)
	def(&cfg.EjectBase, time.Second)
	def(&cfg.EjectMax, 30*time.Second)
	def(&cfg.ProbeTimeout, time.Second)
	if cfg.RetryRatio <= 0 {
		cfg.RetryRatio = 0.1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	authOpts, err := cfg.Auth.dialOptions(cfg.Addrs)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger, stop: make(chan struct{}), methods: map[string]bool{}, checked: make(chan struct{})}
	c.initMetrics()
	opts := append(append(authOpts,
		// Reconnect quickly to a restarted instance (gRPC's default backoff grows to 2 minutes).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	), cfg.DialOptions...)
	for i, a := range cfg.Addrs {
		cc, err := grpc.NewClient(a, opts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("remote: instance %q: %w", a, err)
		}
		in := &instance{idx: i, addr: a, cc: cc, cli: pb.NewLogicServiceClient(cc)}
		c.insts = append(c.insts, in)
		c.m.up.WithLabelValues(a).Set(1)
		c.m.ejections.WithLabelValues(a) // at 0 from start-up
		for r := 0; r < cfg.Replicas; r++ {
			h := fnv.New64a()
			fmt.Fprintf(h, "%s#%d", a, r)
			c.ring = append(c.ring, point{mix(h.Sum64()), i})
		}
	}
	sort.Slice(c.ring, func(a, b int) bool { return c.ring[a].h < c.ring[b].h })
	c.tokens.Store(int64(cfg.RetryBurst) * 1000)
	c.wg.Add(1)
	go c.prober()
	return c, nil
}

func (c *Client) initMetrics() {
	mi := []string{"method", "instance"}
	c.m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_logic_client_calls_total", Help: "Call attempts to logic instances."}, mi)
	c.m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "longlink_logic_client_call_seconds", Help: "Latency of call attempts to logic instances.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, mi)
	c.m.logical = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_logic_client_logical_failures_total", Help: "Attempts answered with a logical error (1000-1999)."}, mi)
	c.m.system = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_logic_client_system_failures_total", Help: "Attempts that failed: transport or server errors, or the instance answered overloaded."}, []string{"method", "instance", "reason"})
	c.m.final = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_logic_client_final_system_failures_total", Help: "Calls that still failed after the pool's retries (instance: the last one tried)."}, mi)
	c.m.ejections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_logic_client_ejections_total", Help: "Instances ejected for failures or overload."}, []string{"instance"})
	c.m.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "longlink_logic_client_instance_up", Help: "1 while an instance takes calls, 0 while ejected."}, []string{"instance"})
	c.m.retries = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_logic_client_retries_total", Help: "Retries of system failures on another instance."})
	c.m.exhausted = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_logic_client_retry_budget_exhausted_total", Help: "Retries refused by the retry budget."})
	c.m.mixed = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_logic_client_stores_mixed", Help: "1 while the logic instances announce different store ids (every call is refused)."})
	c.m.all = []prometheus.Collector{c.m.calls, c.m.latency, c.m.logical, c.m.system, c.m.final, c.m.ejections, c.m.up, c.m.retries, c.m.exhausted, c.m.mixed}
}

// Collectors returns the pool's Prometheus collectors (register them with
// the gateway's registry).
func (c *Client) Collectors() []prometheus.Collector { return c.m.all }

// mix is splitmix64's finalizer: spreads sequential user ids over the ring.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// pick returns the instance owning uid: the first healthy instance clockwise
// from the user's point, skipping those tried. With every untried instance
// ejected it returns the first untried one anyway (better a try than a
// certain failure); nil when all were tried.
func (c *Client) pick(uid uint64, tried uint64) *instance {
	h := mix(uid)
	n := len(c.ring)
	start := sort.Search(n, func(j int) bool { return c.ring[j].h >= h })
	var fallback *instance
	for k := 0; k < n; k++ {
		in := c.insts[c.ring[(start+k)%n].i]
		if tried&(1<<in.idx) != 0 {
			continue
		}
		if !in.ejected.Load() {
			return in
		}
		if fallback == nil {
			fallback = in
		}
	}
	return fallback
}

// Owner returns the address of the instance uid's calls go to now.
func (c *Client) Owner(uid uint64) string {
	if in := c.pick(uid, 0); in != nil {
		return in.addr
	}
	return ""
}

func (c *Client) methodLabel(m string) string {
	c.methodsMu.RLock()
	ok := c.methods[m]
	c.methodsMu.RUnlock()
	if ok {
		return m
	}
	c.methodsMu.Lock()
	defer c.methodsMu.Unlock()
	if len(c.methods) >= c.cfg.MaxMethods {
		return "other"
	}
	c.methods[m] = true
	return m
}

// earn banks RetryRatio of a retry per call; spend takes one retry.
func (c *Client) earn() {
	max := int64(c.cfg.RetryBurst) * 1000
	if c.tokens.Load() < max {
		c.tokens.Add(int64(c.cfg.RetryRatio * 1000))
	}
}

func (c *Client) spend() bool {
	if c.tokens.Add(-1000) < 0 {
		c.tokens.Add(1000)
		return false
	}
	return true
}

// Call implements backend.Backend.
func (c *Client) Call(ctx context.Context, req *backend.Request) ([]byte, error) {
	method := c.methodLabel(req.Method)
	c.earn()
	q := &pb.CallRequest{Uid: req.UID, Device: req.Device, Node: req.Node, Method: req.Method, Body: req.Body}
	var (
		tried   uint64
		lastErr error
		last    *instance
	)
	select {
	case <-c.checked:
	default:
		// The first calls wait for the start-up store check (one round
		// trip), so that nothing is written before a mix is known.
		select {
		case <-c.checked:
		case <-ctx.Done():
		}
	}
	if e := c.mixed.Load(); e != nil {
		return nil, *e
	}
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			if ctx.Err() != nil {
				break
			}
			if !c.spend() {
				c.m.exhausted.Inc()
				break
			}
			c.m.retries.Inc()
		}
		in := c.pick(req.UID, tried)
		if in == nil {
			break
		}
		tried |= 1 << in.idx
		last = in
		if in.ejected.Load() {
			// Every untried instance is ejected and this one is tried
			// anyway: dial it now rather than fail fast from gRPC's
			// reconnect backoff (up to 2 s) if it has come back.
			redial(ctx, in.cc)
		}
		if !in.idOK.Load() {
			if err := c.verify(ctx, in); err != nil {
				if e := c.mixed.Load(); e != nil {
					return nil, *e
				}
				lastErr = fmt.Errorf("remote %s: %w", in.addr, err)
				c.fail(in, status.Code(err))
				continue
			}
		}
		start := time.Now()
		rep, err := in.cli.Call(ctx, q)
		c.m.calls.WithLabelValues(method, in.addr).Inc()
		c.m.latency.WithLabelValues(method, in.addr).Observe(time.Since(start).Seconds())
		if err == nil {
			code := codec.Code(rep.Code)
			switch {
			case code == codec.OK:
				c.ok(in)
				return rep.Body, nil
			case code >= 1000 && code < 2000:
				c.ok(in)
				c.m.logical.WithLabelValues(method, in.addr).Inc()
				return nil, &backend.Error{Kind: backend.KindLogical, Code: code, Msg: rep.Message}
			case code == codec.CodeUnavailable:
				// The instance answered: what it depends on (the store every
				// instance shares) is down. Neither ejected nor retried
				// elsewhere, which would fail alike and spend the budget.
				c.m.system.WithLabelValues(method, in.addr, "unavailable").Inc()
				c.m.final.WithLabelValues(method, in.addr).Inc()
				return nil, &backend.Error{Kind: backend.KindUnavailable, Code: codec.CodeUnavailable, Msg: rep.Message, RetryAfter: max(rep.RetryAfterMs, 100)}
			case code == codec.CodeBusy:
				c.m.system.WithLabelValues(method, in.addr, "overloaded").Inc()
				c.eject(in, time.Duration(rep.RetryAfterMs)*time.Millisecond, "overloaded")
				lastErr = backend.Busy(max(rep.RetryAfterMs, 100), rep.Message)
				continue
			default:
				err = fmt.Errorf("unexpected code %d: %s", code, rep.Message)
			}
		}
		reason := "error"
		if s, ok := status.FromError(err); ok {
			reason = strings.ToLower(s.Code().String())
		}
		c.m.system.WithLabelValues(method, in.addr, reason).Inc()
		lastErr = fmt.Errorf("remote %s: %w", in.addr, err)
		if ctx.Err() != nil {
			break // the caller's deadline: not retryable
		}
		sc := status.Code(err)
		c.fail(in, sc)
		if sc == codes.DeadlineExceeded || sc == codes.Canceled {
			break // the caller's deadline ran out on the server: nothing left to retry with
		}
	}
	if lastErr == nil {
		lastErr = ErrNoInstance
	}
	addr := ""
	if last != nil {
		addr = last.addr
	}
	c.m.final.WithLabelValues(method, addr).Inc()
	return nil, lastErr
}

func (c *Client) ok(in *instance) {
	if in.fails.Load() != 0 {
		in.fails.Store(0)
	}
	if in.ejections.Load() != 0 && time.Now().UnixNano()-in.readmit.Load() > int64(c.cfg.EjectMax) {
		in.ejections.Store(0) // healthy for a while: the next ejection starts short again
	}
}

func (c *Client) fail(in *instance, code codes.Code) {
	n := in.fails.Add(1)
	if code == codes.Unavailable || int(n) >= c.cfg.FailThreshold {
		c.eject(in, 0, code.String())
	}
}

// eject takes in out of the ring for a backoff (at least hint), after which
// the prober pings it back in.
func (c *Client) eject(in *instance, hint time.Duration, why string) {
	if !in.ejected.CompareAndSwap(false, true) {
		return
	}
	n := in.ejections.Add(1)
	d := c.cfg.EjectBase << min(n-1, 16)
	d = max(min(d, c.cfg.EjectMax), hint)
	in.until.Store(time.Now().Add(d).UnixNano())
	c.m.ejections.WithLabelValues(in.addr).Inc()
	c.m.up.WithLabelValues(in.addr).Set(0)
	c.log.Warn("logic instance ejected", "instance", in.addr, "reason", why, "for", d)
}

func (c *Client) prober() {
	defer c.wg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	c.checkStores()
	close(c.checked)
	lastCheck := time.Now()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if time.Since(lastCheck) >= storeCheckInterval {
			lastCheck = time.Now()
			c.checkStores()
		}
		now := time.Now().UnixNano()
		for _, in := range c.insts {
			if !in.ejected.Load() || now < in.until.Load() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ProbeTimeout)
			redial(ctx, in.cc) // a probe dials now: the instance may be back
			rep, err := in.cli.Ping(ctx, &pb.PingRequest{})
			cancel()
			if err == nil && !rep.Overloaded {
				in.idOK.Store(false) // it may have restarted on another store: ask again
				in.fails.Store(0)
				in.readmit.Store(time.Now().UnixNano())
				in.ejected.Store(false)
				c.m.up.WithLabelValues(in.addr).Set(1)
				c.log.Info("logic instance back in", "instance", in.addr)
				continue
			}
			n := in.ejections.Add(1)
			d := min(c.cfg.EjectBase<<min(n-1, 16), c.cfg.EjectMax)
			in.until.Store(time.Now().Add(d).UnixNano())
		}
	}
}

// redial ends cc's reconnect backoff and waits (briefly) for the new
// attempt to start, so that the next call waits for its outcome instead
// of failing fast on the last one's.
func redial(ctx context.Context, cc *grpc.ClientConn) {
	if cc.GetState() != connectivity.TransientFailure {
		return
	}
	cc.ResetConnectBackoff()
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	cc.WaitForStateChange(wctx, connectivity.TransientFailure)
}

// storeCheckInterval is how often the prober asks every instance for its
// store id again (an instance restarted on another store is caught within
// it even when no call failed).
const storeCheckInterval = 5 * time.Second

// methodInfo is the reference logic's internal method announcing its store
// id (backend/logic.MethodInfo; not imported: any LogicService may sit
// behind the pool).
const methodInfo = "logic.info"

// verify asks in for its store id and compares it with the other
// instances'. An instance that does not know the method (another
// LogicService implementation) announces nothing and is not compared.
func (c *Client) verify(ctx context.Context, in *instance) error {
	rep, err := in.cli.Call(ctx, &pb.CallRequest{Method: methodInfo})
	if err != nil {
		return err
	}
	id := ""
	switch code := codec.Code(rep.Code); {
	case code == codec.OK:
		var info struct {
			StoreID string `json:"store_id"`
		}
		if err := json.Unmarshal(rep.Body, &info); err != nil {
			return fmt.Errorf("%s: %w", methodInfo, err)
		}
		id = info.StoreID
	case code >= 1000 && code < 2000:
	default:
		return fmt.Errorf("%s: code %d: %s", methodInfo, code, rep.Message)
	}
	in.storeID.Store(&id)
	in.idOK.Store(true)
	c.compareStores()
	return c.mixedErr()
}

// checkStores asks every instance not ejected for its store id, at once.
func (c *Client) checkStores() {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ProbeTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, in := range c.insts {
		if in.ejected.Load() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.verify(ctx, in)
		}()
	}
	wg.Wait()
}

func (c *Client) mixedErr() error {
	if e := c.mixed.Load(); e != nil {
		return *e
	}
	return nil
}

// compareStores sets or clears the mixed state from the ids known.
func (c *Client) compareStores() {
	c.storeMu.Lock()
	defer c.storeMu.Unlock()
	byID := map[string][]string{}
	var ids []string
	for _, in := range c.insts {
		p := in.storeID.Load()
		if p == nil || *p == "" {
			continue
		}
		if byID[*p] == nil {
			ids = append(ids, *p)
		}
		byID[*p] = append(byID[*p], in.addr)
	}
	if len(ids) <= 1 {
		if c.mixed.Swap(nil) != nil {
			c.log.Info("logic instances are on one store again; calls resume", "store_id", ids)
			c.m.mixed.Set(0)
		}
		return
	}
	var parts []string
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("store %s at %s", id, strings.Join(byID[id], ", ")))
	}
	err := error(backend.Unavailable(fmt.Sprintf("remote: refusing every call: the logic instances are on different stores (%s); "+
		"each bbolt store is private to one instance, so users' data would be split and messages lost: run one bbolt instance, "+
		"or give every instance the same replicated --store (docs/logic.md)", strings.Join(parts, "; "))))
	if old := c.mixed.Swap(&err); old == nil || (*old).Error() != err.Error() {
		c.log.Error("logic instances are on different stores; refusing every call", "stores", strings.Join(parts, "; "))
		c.m.mixed.Set(1)
	}
}

// ProbeResult is one instance's answer to Probe.
type ProbeResult struct {
	Addr string
	Err  error // nil: it answered an authenticated Ping
}

// Probe pings every instance once, concurrently, within ctx: what a
// gateway logs at start-up, so that an unreachable or misconfigured logic
// (wrong secret, TLS mismatch) is named before the first call fails.
func (c *Client) Probe(ctx context.Context) []ProbeResult {
	out := make([]ProbeResult, len(c.insts))
	var wg sync.WaitGroup
	for i, in := range c.insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := in.cli.Ping(ctx, &pb.PingRequest{})
			if err == nil {
				err = c.verify(ctx, in)
			}
			if err != nil {
				if s, ok := status.FromError(err); ok && s.Code() == codes.Unauthenticated {
					err = fmt.Errorf("refused the gateway's credentials: %s", s.Message())
				} else if ok {
					err = fmt.Errorf("%s: %s", s.Code(), s.Message())
				}
			}
			out[i] = ProbeResult{Addr: in.addr, Err: err}
		}()
	}
	wg.Wait()
	return out
}

// presence sends one event to uid's instance, with one retry elsewhere.
func (c *Client) presence(ctx context.Context, p backend.Presence, online bool) error {
	ev := &pb.PresenceEvent{Uid: p.UID, Device: p.Device, Node: p.Node, ConnId: p.ConnID, Online: online}
	var tried uint64
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		in := c.pick(p.UID, tried)
		if in == nil {
			break
		}
		tried |= 1 << in.idx
		if _, err = in.cli.Presence(ctx, ev); err == nil || ctx.Err() != nil {
			return err
		}
	}
	if err == nil {
		err = ErrNoInstance
	}
	return err
}

// Online implements backend.Backend.
func (c *Client) Online(ctx context.Context, p backend.Presence) error {
	return c.presence(ctx, p, true)
}

// Offline implements backend.Backend.
func (c *Client) Offline(ctx context.Context, p backend.Presence) error {
	return c.presence(ctx, p, false)
}

// Close stops the prober and closes the connections.
func (c *Client) Close() error {
	select {
	case <-c.stop:
		return nil
	default:
	}
	close(c.stop)
	c.wg.Wait()
	for _, in := range c.insts {
		_ = in.cc.Close()
	}
	return nil
}

var _ backend.Backend = (*Client)(nil)
