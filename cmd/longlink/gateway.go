package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/secure"
	"github.com/longlink/longlink/supervisor"
	"github.com/longlink/longlink/web"
)

const gatewaySummary = "run the access gateway (one process, or a supervisor of --workers processes)"

func init() {
	register(command{name: "gateway", summary: gatewaySummary, run: runGateway})
}

func runGateway(args []string) int {
	fs := newFlagSet("gateway", gatewaySummary)
	var (
		cfg          gateway.Config
		admin        = fs.String("admin", "127.0.0.1:7101", "admin HTTP listener (/metrics, /healthz, /status); empty disables")
		dataDir      = fs.String("data", auth.DefaultDataDir(), "data directory (token keys in keys.json; created with a dev key on first run)")
		workers      = fs.Int("workers", 1, "worker processes sharing the port with SO_REUSEPORT (each holds up to ~19k connections here)")
		workerIdx    = fs.Int("worker-index", -1, "internal: set by the supervisor for its workers")
		logLevel     = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat    = fs.String("log-format", "text", "text or json")
		drainMax     = fs.Duration("shutdown-timeout", 30*time.Second, "on SIGTERM, close whatever is left after this long")
		httpCfg      gateway.HTTPConfig
		switchesFile = fs.String("switches", "", "file the operator's switches persist in (default <data>/switches.json)")
		gcPercent    = fs.Int("gc-percent", 25, "Go GC target percentage (GOGC); the gateway's heap is mostly long-lived connection state that allocates little, so a low value costs little CPU and keeps RSS near the live heap")
	)
	fs.StringVar(&cfg.Listen, "listen", ":7100", "client TCP listen address")
	fs.StringVar(&httpCfg.Addr, "http", ":7180", "short-connection HTTP access (POST /v1/call/{method}); empty disables")
	fs.StringVar(&httpCfg.TLSCert, "http-tls-cert", "", "certificate for HTTPS with HTTP/2 on --http")
	fs.StringVar(&httpCfg.TLSKey, "http-tls-key", "", "private key for --http-tls-cert")
	prios := fs.String("priority", "", "admission priorities, method=N[,method=N…] (0 most important; merged into the defaults: login/sync/msg.send 1, contacts/profile 2, shake/open 3, others 4)")
	fs.DurationVar(&cfg.Admission.QueueTarget, "queue-target", 20*time.Millisecond, "overload signal: average queueing time above this sheds low-priority calls")
	fs.Float64Var(&cfg.ConnAdmission.AcceptRate, "accept-rate", 0, "new connections per second per process (0: no limit; also a runtime switch)")
	fs.IntVar(&cfg.ConnAdmission.MaxConns, "max-conns", 0, "connections per process (0: no limit; also a runtime switch)")
	fs.IntVar(&cfg.ConnAdmission.FlapMax, "flap-max", 60, "refuse a user that authenticates more than this many times per --flap-window (0: off)")
	fs.DurationVar(&cfg.ConnAdmission.FlapWindow, "flap-window", time.Minute, "window of the flapping rule")
	fs.Func("proxy-protocol-from", "balancer networks, CIDR[,CIDR…], whose connections to --listen must start with a PROXY protocol v1/v2 header naming the client (from elsewhere a PROXY header is refused; default: off)", func(v string) (err error) {
		cfg.ProxyProtocolFrom, err = gateway.ParseProxyNets(v)
		return err
	})
	fs.StringVar(&cfg.Node, "node", "", "node id of this gateway (default hostname:port, plus /wN per worker)")
	fs.IntVar(&cfg.Loops, "loops", 0, "event loops per process (0: half the CPUs, at least 1)")
	fs.IntVar(&cfg.HandshakeWorkers, "handshake-workers", 0, "goroutines doing the encryption handshakes' X25519 off the loops (0: the CPUs the loops leave, at least 1, each worker process its share; -1: on the loop)")
	fs.IntVar(&cfg.MaxBody, "max-body", 64<<10, "largest accepted frame body in bytes")
	fs.DurationVar(&cfg.AuthTimeout, "auth-timeout", 10*time.Second, "AUTH must arrive within this")
	fs.DurationVar(&cfg.FrameTimeout, "frame-timeout", 30*time.Second, "a started frame must complete or gain --min-frame-rate bytes/s within each window this long (else 3013 frame_too_slow)")
	fs.IntVar(&cfg.MinFrameRate, "min-frame-rate", 256, "bytes per second a started frame must keep arriving at, judged per --frame-timeout window")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat", 0, "a fixed heartbeat interval for every network (default: adaptive per-network policies, 210s-580s on cellular; change at runtime with PUT /heartbeat/policy on the admin port)")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "with --heartbeat: close connections silent this long (default 2*heartbeat+60s)")
	fs.IntVar(&cfg.MaxFrameRate, "max-frame-rate", 200, "frames per second per connection before it is closed as a flood")
	fs.IntVar(&cfg.PoolSize, "pool", 256, "forwarding goroutines per process")
	callYield := fs.Bool("call-yield", false, "the event loop yields to the forwarding goroutine a call woke, so the call starts at once instead of after the loop's batch of events (costs a thread wake-up per call: ~+70% CPU per call at 20k calls/s on 2 vCPUs)")
	fs.IntVar(&cfg.QueueSize, "queue", 16384, "calls waiting for a forwarding goroutine before 'busy'")
	fs.DurationVar(&cfg.CallTimeout, "call-timeout", 5*time.Second, "default deadline of a forwarded call")
	fs.DurationVar(&cfg.DrainWindow, "drain", 10*time.Second, "on SIGTERM, spread GOAWAYs over this window")
	fs.StringVar(&cfg.NATS, "nats", "", "external NATS cluster for push routing, e.g. nats://a:4222,nats://b:4222 (default: an embedded server)")
	fs.DurationVar(&cfg.PushWindow, "push-window", 20*time.Millisecond, "notifies for the same user and type within this window are merged")
	pf := addPushFlags(fs)
	sf := addShakeFlags(fs)
	ef := addEncryptionFlags(fs)
	of := addOfflineFlags(fs, true)
	ff := addFleetFlags(fs)
	backendSpec := fs.String("backend", "embedded", "logic backend: embedded (the reference IM logic on <data>/logic.db; with --workers it runs in the supervisor), echo (test methods only), or grpc://host:port[,host:port…] (remote `longlink logic` instances)")
	bf := addBackendFlags(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	parsed := snapshotFlags(fs) // for SIGHUP: what the configuration said, before defaults are derived
	if *prios != "" {
		cfg.Admission.Priorities = gateway.DefaultPriorities()
		for _, kv := range strings.Split(*prios, ",") {
			m, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			n, err := strconv.Atoi(v)
			if !ok || err != nil || n < 0 || n > 63 {
				fmt.Fprintf(os.Stderr, "longlink gateway: --priority %q: want method=0..63\n", kv)
				return 2
			}
			cfg.Admission.Priorities[m] = n
		}
	}
	cfg.CallYield = *callYield
	log := newLogger(*logLevel, *logFormat, *workerIdx)
	slog.SetDefault(log)

	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(*gcPercent)
	}
	if r, err := strconv.Atoi(os.Getenv("LONGLINK_MEMPROFILE_RATE")); err == nil && r > 0 {
		runtime.MemProfileRate = r // finer heap profiles at /debug/pprof/heap (diagnostics)
	}
	adminTokenPath := filepath.Join(*dataDir, "admin.token")
	adminToken, tokCreated, err := gateway.LoadOrCreateAdminToken(adminTokenPath)
	if err != nil {
		log.Error("cannot load the admin token", "file", adminTokenPath, "err", err)
		return 1
	}
	if tokCreated {
		log.Info("created the admin token for switch endpoints and `longlink admin`", "file", adminTokenPath)
	}
	cfg.AdminToken = adminToken
	if *switchesFile == "" {
		*switchesFile = filepath.Join(*dataDir, "switches.json")
	}
	cfg.SwitchesFile = *switchesFile
	sf.prepareHub(*dataDir)
	if err := of.prepare(*dataDir); err != nil {
		fmt.Fprintln(os.Stderr, "longlink gateway:", err)
		return 2
	}
	externalNATS := cfg.NATS != "" // --nats given: the shake ledger is off by default
	var hub *push.Hub
	if *pf.on && *workerIdx < 0 { // one push hub per host: this process, or the supervisor
		h, err := startPushHub(log, pf, cfg.NATS, *dataDir, adminToken)
		if err != nil {
			log.Error("cannot start push", "err", err)
			return 1
		}
		defer h.Close()
		hub, cfg.NATS, cfg.Ready = h, h.NATSURL(), h.Ready
		if *ff.on {
			defer watchFleetForRouter(log, h, 3**ff.interval)()
			sk := *ef.file
			if sk == "" {
				sk = serverKeyFile(*dataDir)
			}
			if *ef.mode == gateway.EncryptionOff {
				sk = ""
			}
			defer followFleetKeys(log, h, map[string]string{fleet.KeyToken: auth.KeyFile(*dataDir), fleet.KeyServer: sk, fleet.KeyFleet: ff.keyFile(*dataDir)})()
		}
	} else if !*pf.on {
		cfg.NATS = ""
	} else if natsAuth, err = pf.auth.resolve(cfg.NATS, *dataDir); err != nil {
		log.Error("NATS credentials", "err", err)
		return 2
	}
	cfg.NATSOptions = []nats.Option{natsAuth.As(push.RoleGateway)}
	if *workerIdx < 0 { // one ledger per host
		stopLedger, err := startShakeLedger(log, sf, *dataDir, cfg.NATS, externalNATS, adminToken)
		if err != nil {
			log.Error("cannot start the shake ledger", "err", err)
			return 1
		}
		defer stopLedger()
	}
	off, err := startOfflineHub(log, of, hub) // one per host, beside the router
	if err != nil {
		log.Error("cannot start offline push", "err", err)
		return 1
	}
	defer off.close()
	gb, err := openGatewayBackend(log, backendSetup{spec: *backendSpec, dataDir: *dataDir, hub: hub,
		supervisor: *workers > 1 && *workerIdx < 0, worker: *workerIdx >= 0, flags: bf})
	if err != nil {
		log.Error("cannot open the backend", "err", err)
		return 1
	}
	defer gb.close()
	if off != nil {
		gb.collectors = append(gb.collectors, off.collectors...)
	}
	if *workerIdx < 0 { // the fleet key file, once, before any worker
		if err := ff.prepare(log, *dataDir); err != nil {
			log.Error("cannot load the fleet keys", "err", err)
			return 1
		}
	}
	if *workers > 1 && *workerIdx < 0 {
		if err := ef.apply(log, &gateway.Config{}, *dataDir, false); err != nil { // create the key file once, before the workers
			log.Error("cannot load server keys", "err", err)
			return 1
		}
		args := os.Args[1:]
		if hub != nil {
			args = append(args[:len(args):len(args)], "--nats", hub.NATSURL())
			if hub.Secret() != nil { // workers derive their password; nothing secret on the command line
				args = append(args, "--nats-secret", filepath.Join(*dataDir, push.SecretFile))
			}
		}
		args = append(args[:len(args):len(args)], gb.workerArgs...)
		return runSupervisor(log, *workers, *admin, *dataDir, gb.runDir, *drainMax, adminToken, args, hub, gb.collectors...)
	}

	keyPath := auth.KeyFile(*dataDir)
	keys, created, err := auth.LoadOrCreate(keyPath)
	if err != nil {
		log.Error("cannot load token keys", "file", keyPath, "err", err)
		return 1
	}
	if created {
		log.Info("created a development token key; mint tokens with `longlink token --uid N`", "file", keyPath)
	} else if *workerIdx < 0 {
		log.Info("token keys loaded", "file", keyPath)
	}
	cfg.Keys = keys
	if err := ef.apply(log, &cfg, *dataDir, *workerIdx > 0); err != nil {
		log.Error("cannot load server keys", "err", err)
		return 1
	}
	cfg.Logger = log
	cfg.Backend = gb.be
	stopDevices, err := wrapOfflineBackend(log, of, &cfg) // device.register/unregister in the worker
	if err != nil {
		log.Error("cannot serve device registration", "err", err)
		return 1
	}
	defer stopDevices()
	if cfg.Fleet, err = ff.config(*dataDir, cfg.NATS); err != nil {
		log.Error("fleet", "err", err)
		return 2
	}
	if *workerIdx >= 0 {
		cfg.ReusePort = true
		if cfg.Loops == 0 {
			cfg.Loops = 1 // many workers already spread over the cores
		}
		if cfg.HandshakeWorkers == 0 { // the cores are shared by *workers processes: size the handshake pool by this one's share
			cfg.HandshakeWorkers = max(1, runtime.GOMAXPROCS(0) / *workers - cfg.Loops)
		}
		if cfg.EphemeralStore == 0 { // and the pre-generated ephemerals: 60 workers filling 1,024 each at start took seconds of the host's CPU
			cfg.EphemeralStore = max(64, secure.EphemeralStore / *workers)
		}
		if cfg.Node == "" {
			h, _ := os.Hostname()
			cfg.Node = fmt.Sprintf("%s/%s/w%d", h, cfg.Listen, *workerIdx)
		}
	}
	stopShake, err := setupShake(log, sf, &cfg, *dataDir, *workerIdx)
	if err != nil {
		log.Error("cannot load the shake event", "err", err)
		return 1
	}
	defer stopShake()
	srv, err := gateway.New(cfg)
	if err != nil {
		log.Error("bad configuration", "err", err)
		return 2
	}
	for _, lc := range ledgerLinks {
		srv.AddLink(lc)
	}
	if hub != nil {
		for _, c := range hub.Router().Collectors() {
			_ = srv.Registerer().Register(c)
		}
	}
	for _, c := range gb.collectors {
		_ = srv.Registerer().Register(c)
	}
	if err := srv.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer ef.reloadOnHUP(log, srv, keyPath, func() { reloadGatewayConfig(log, srv, parsed, args); ff.reload(log, srv, *dataDir) })()
	if httpCfg.Addr != "" {
		httpCfg.Example = web.Files // the browser client's demo page on GET /example/
		addr, err := srv.ServeHTTP(httpCfg, *workerIdx >= 0)
		if err != nil {
			log.Error("cannot start http listener", "err", err)
			_ = srv.Close()
			return 1
		}
		if *workerIdx <= 0 {
			log.Info("http access listening", "addr", addr, "tls", httpCfg.TLSCert != "", "endpoint", "POST /v1/call/{method}")
		}
	}
	if *admin != "" {
		addr, err := srv.ServeAdmin(*admin)
		if err != nil {
			log.Error("cannot start admin listener", "err", err)
			_ = srv.Close()
			return 1
		}
		if *workerIdx < 0 {
			log.Info("admin listening", "addr", addr, "endpoints", "/metrics /healthz /status")
		}
	}
	stop := supervisor.WatchStop(log, *workerIdx >= 0) // a worker drains once, also when its supervisor dies
	select {
	case why := <-stop.Drain:
		log.Info("shutting down", "reason", why)
		ctx, cancel := context.WithTimeout(context.Background(), *drainMax)
		defer cancel()
		go func() { <-stop.Now; log.Warn("second signal: closing now"); _ = srv.Close() }()
		if err := srv.Shutdown(ctx); err != nil {
			log.Warn("shutdown", "err", err)
		}
	case <-srv.Done():
		log.Error("event loops stopped unexpectedly")
		return 1
	}
	return 0
}

func newLogger(level, format string, worker int) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	if strings.EqualFold(format, "json") {
		h = slog.NewJSONHandler(os.Stderr, opts)
	} else {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	l := slog.New(h)
	if worker >= 0 {
		l = l.With("worker", worker)
	}
	return l
}
