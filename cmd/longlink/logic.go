package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/supervisor"
)

const logicSummary = "serve the reference IM logic (sync, messages, groups, contacts, profile) over gRPC"

func init() {
	register(command{name: "logic", summary: logicSummary, run: runLogic})
}

func runLogic(args []string) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	return logicMain(args, sig, nil)
}

// logicMain is `longlink logic` until stop yields; started (if not nil)
// hears the gRPC address once it serves.
func logicMain(args []string, stop <-chan os.Signal, started func(addr string)) int {
	if len(args) > 0 {
		switch args[0] {
		case "export":
			return logicExport(args[1:], os.Stdout)
		case "import":
			return logicImport(args[1:], os.Stdin)
		}
	}
	fs := newFlagSet("logic", logicSummary+"\n\n`longlink logic export` and `longlink logic import` move a bbolt store to a replicated one (docs/logic.md)")
	var (
		listen      = fs.String("listen", "127.0.0.1:7200", "gRPC LogicService address, host:port or unix:/path (the gateways' --backend grpc://host:port); off loopback it needs --tls-cert/--tls-key or --allow-plaintext")
		dataDir     = fs.String("data", auth.DefaultDataDir(), "data directory; the store is logic.db in it unless --db is set")
		dbPath      = fs.String("db", "", "bbolt store file (default <data>/logic.db); --store bbolt:///path is the same")
		storeURL    = fs.String("store", "", "the store: bbolt:///path (default: --db, one instance only) or nats://host:4222[,host:4222…][?replicas=3] for the replicated JetStream store that several instances share (docs/logic.md)")
		storeCreds  = fs.String("store-creds", "", "nats:// store: NATS credentials file")
		storeUser   = fs.String("store-user", "", "nats:// store: NATS user (or user:password@ in the URL)")
		storePass   = fs.String("store-password", "", "nats:// store: NATS password (better as LONGLINK_STORE_PASSWORD)")
		storeTLS    = addStoreTLSFlags(fs)
		secretFile  = fs.String("secret", "", "file with the shared secret every caller must present (default <data>/logic.secret, created 0600 if absent; give the gateways the same file as --backend-secret)")
		tlsCert     = fs.String("tls-cert", "", "serve TLS with this certificate (PEM)")
		tlsKey      = fs.String("tls-key", "", "private key for --tls-cert")
		tlsCA       = fs.String("tls-ca", "", "require client certificates signed by this CA (mutual TLS)")
		plaintextOK = fs.Bool("allow-plaintext", false, "allow a plaintext listener off loopback (the secret then crosses the network in clear)")
		natsURL     = fs.String("nats", "nats://127.0.0.1:4222", "NATS URL(s) of the gateways' push routing, for notifies (empty: none)")
		pushGRPC    = fs.String("push-grpc", "", "a gateway host's PushService address, for notifies instead of NATS")
		retention   = fs.Duration("retention", 72*time.Hour, "keep delivered messages this long for new devices (negative: trim once confirmed)")
		maxInflight = fs.Int("max-inflight", 1024, "calls served at once; more are answered 'overloaded' so gateways go elsewhere")
		metrics     = fs.String("metrics", "127.0.0.1:7201", "HTTP address for /metrics; empty disables")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat   = fs.String("log-format", "text", "text or json")
	)
	pushToken := fs.String("push-token-file", "", "bearer token file for --push-grpc (default <data>/push.token)")
	na := addNATSAuthFlags(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	log := newLogger(*logLevel, *logFormat, -1)
	slog.SetDefault(log)
	if *dbPath == "" {
		*dbPath = filepath.Join(*dataDir, "logic.db")
	}
	if *storeURL == "" {
		*storeURL = "bbolt://" + *dbPath
	}
	if *secretFile == "" {
		*secretFile = filepath.Join(*dataDir, remote.SecretFile)
	}
	secret, created, err := remote.LoadOrCreateSecret(*secretFile)
	if err != nil {
		log.Error("cannot load the logic secret", "err", err)
		return 1
	}
	if created {
		log.Info("created the logic secret; give gateways this file as --backend-secret", "file", *secretFile)
	}
	sa := remote.ServerAuth{Secret: secret, Logger: log}
	if tf := (remote.TLSFiles{Cert: *tlsCert, Key: *tlsKey, CA: *tlsCA}); tf.Enabled() {
		if sa.TLS, err = remote.ServerTLS(tf); err != nil {
			log.Error("bad TLS settings", "err", err)
			return 2
		}
	}
	var notifier logic.Notifier
	switch {
	case *pushGRPC != "":
		if *pushToken == "" {
			*pushToken = filepath.Join(*dataDir, push.PushTokenFile)
		}
		tok, _, err := push.LoadOrCreateToken(*pushToken, false)
		if err != nil {
			log.Error("push gRPC token", "err", err)
			return 2
		}
		n, cc, err := logic.NewGRPCNotifier(*pushGRPC, grpc.WithPerRPCCredentials(push.BearerToken(tok)))
		if err != nil {
			log.Error("push gRPC", "err", err)
			return 2
		}
		defer cc.Close()
		notifier = n
	case *natsURL != "":
		var err error
		if natsAuth, err = na.resolve(*natsURL, *dataDir); err != nil {
			log.Error("NATS credentials", "err", err)
			return 2
		}
		nc, err := push.Connect(*natsURL, "longlink-logic", log, natsAuth.As(push.RolePusher))
		if err != nil {
			log.Error("cannot connect to NATS", "url", *natsURL, "err", err)
			return 1
		}
		defer nc.Close()
		notifier = logic.NATSNotifier{Conn: nc}
	default:
		log.Warn("no --nats or --push-grpc: clients get no notifies and must sync on their own")
	}
	st, err := logic.OpenStore(*storeURL, storeTLS.apply(logic.StoreOptions{Creds: *storeCreds, User: *storeUser, Password: *storePass,
		SecretFile: storeSecretFile(*storeURL, *na.secret, *storeCreds, *storeUser, *dataDir), Logger: log}))
	if err != nil {
		log.Error("cannot open the logic store", "store", redactURL(*storeURL), "err", err)
		return 1
	}
	l, err := logic.New(st, logic.Config{Notifier: notifier, Retention: *retention, Logger: log})
	if err != nil {
		st.Close()
		log.Error("cannot open the logic store", "store", redactURL(*storeURL), "err", err)
		return 1
	}
	defer l.Close()
	// Listen only now, ready to serve: a gateway that connects is answered.
	ln, err := listenLogic(*listen, sa.TLS != nil, *plaintextOK)
	if err != nil {
		log.Error("cannot listen", "err", err)
		return 1
	}
	gs, err := serveLogic(ln, l, *maxInflight, sa)
	if err != nil {
		ln.Close()
		log.Error("cannot serve", "err", err)
		return 1
	}
	if *metrics != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg.MustRegister(l.Collectors()...)
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		hs := &http.Server{Addr: *metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Warn("metrics listener", "addr", *metrics, "err", err)
			}
		}()
		defer hs.Close()
	}
	log.Info("logic serving", "grpc", ln.Addr().String(), "tls", sa.TLS != nil, "client_certs", *tlsCA != "", "secret", *secretFile, "store", redactURL(*storeURL), "store_id", l.StoreID(), "metrics", *metrics)
	if started != nil {
		started(ln.Addr().String())
	}
	s := <-stop
	log.Info("shutting down", "signal", s.String())
	gs.stop(10 * time.Second)
	return 0
}

// logicExport is `longlink logic export`: a bbolt store as a dump on out.
func logicExport(args []string, out io.Writer) int {
	fs := newFlagSet("logic export", "write a bbolt logic store as a dump on stdout (stop the logic first: bbolt allows one process)")
	var (
		dataDir = fs.String("data", auth.DefaultDataDir(), "data directory; the store is logic.db in it unless --db is set")
		dbPath  = fs.String("db", "", "bbolt store file (default <data>/logic.db)")
	)
	if !parseFlags(fs, args) {
		return 2
	}
	if *dbPath == "" {
		*dbPath = filepath.Join(*dataDir, "logic.db")
	}
	if _, err := os.Stat(*dbPath); err != nil {
		fmt.Fprintf(os.Stderr, "longlink logic export: %v\n", err)
		return 1
	}
	st, err := logic.OpenBolt(*dbPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "longlink logic export: %v\n", err)
		return 1
	}
	defer st.Close()
	n, err := logic.Export(st, out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "longlink logic export: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "exported %d records from %s\n", n, *dbPath)
	return 0
}

// logicImport is `longlink logic import`: a dump from in into a new
// replicated store.
func logicImport(args []string, in io.Reader) int {
	fs := newFlagSet("logic import", "load a dump (from `longlink logic export`, on stdin) into a new replicated store; start the logic instances after it")
	var (
		storeURL   = fs.String("store", "", "the replicated store: nats://host:4222[,host:4222…][?replicas=3&stream=…]")
		storeCreds = fs.String("store-creds", "", "NATS credentials file")
		storeUser  = fs.String("store-user", "", "NATS user")
		storePass  = fs.String("store-password", "", "NATS password (better as LONGLINK_STORE_PASSWORD)")
		storeTLS   = addStoreTLSFlags(fs)
		dataDir    = fs.String("data", auth.DefaultDataDir(), "a gateway host's data directory: its nats.secret authenticates a store on that host's embedded NATS (loopback)")
		secret     = fs.String("nats-secret", "", "the NATS secret file (default: <data>/nats.secret, when the store is on loopback)")
	)
	if !parseFlags(fs, args) {
		return 2
	}
	if *storeURL == "" {
		fmt.Fprintln(os.Stderr, "longlink logic import: --store nats://… is required")
		return 2
	}
	log := newLogger("warn", "text", -1)
	st, err := logic.OpenStore(*storeURL, storeTLS.apply(logic.StoreOptions{Creds: *storeCreds, User: *storeUser, Password: *storePass,
		SecretFile: storeSecretFile(*storeURL, *secret, *storeCreds, *storeUser, *dataDir), Logger: log}))
	if err != nil {
		fmt.Fprintf(os.Stderr, "longlink logic import: %v\n", err)
		return 1
	}
	defer st.Close()
	n, err := logic.Import(st, in)
	if err != nil {
		fmt.Fprintf(os.Stderr, "longlink logic import: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "imported %d records into %s\n", n, redactURL(*storeURL))
	return 0
}

// redactURL hides a password in a store URL for logs.
// storeSecretFile is the NATS secret a nats:// store authenticates with:
// --nats-secret, else, as for --nats (natsAuthFlags.resolve), the host's
// <data>/nats.secret when every server is on loopback and no other
// credentials are given (a store on a gateway host's embedded NATS).
func storeSecretFile(storeURL, explicit, creds, user, dataDir string) string {
	if explicit != "" || creds != "" || user != "" || dataDir == "" {
		return explicit
	}
	servers, _, _ := strings.Cut(storeURL, "?")
	if !strings.HasPrefix(servers, "nats://") || strings.Contains(servers, "@") || !allLoopback(servers) {
		return ""
	}
	path := filepath.Join(dataDir, push.SecretFile)
	if _, err := os.Stat(path); err != nil {
		return ""
	}
	return path
}

func redactURL(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		if j := strings.LastIndexByte(u, '@'); j > i {
			return u[:i+3] + "***@" + u[j+1:]
		}
	}
	return u
}

// listenLogic opens the LogicService listener: host:port, or unix:/path
// (created 0600). Plaintext off loopback is refused unless allowed.
func listenLogic(addr string, tls, plaintextOK bool) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		_ = os.Remove(path) // a stale socket of an earlier run
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("logic listener %s: %w", addr, err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("logic listener %s: %w", addr, err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("logic listener %s: %w", addr, err)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !tls && !plaintextOK && !ip.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("logic listener %s: refusing plaintext off loopback (%s); set --tls-cert and --tls-key (and --tls-ca for client certificates), or --allow-plaintext on a network you trust", addr, ip)
	}
	return ln, nil
}

// logicGRPC is a LogicService server with its health service.
type logicGRPC struct {
	gs *grpc.Server
	hs *health.Server
}

// serveLogic serves be on ln: LogicService behind the secret (and TLS),
// plus grpc.health.v1.
func serveLogic(ln net.Listener, be backend.Backend, maxInflight int, sa remote.ServerAuth) (*logicGRPC, error) {
	opts, err := remote.ServerOptions(sa)
	if err != nil {
		return nil, err
	}
	gs := grpc.NewServer(opts...)
	remote.NewServer(be, maxInflight).Register(gs)
	hs := remote.RegisterHealth(gs)
	go func() { _ = gs.Serve(ln) }()
	return &logicGRPC{gs: gs, hs: hs}, nil
}

// stop reports NOT_SERVING, lets calls in flight finish for up to timeout,
// then closes what is left.
func (s *logicGRPC) stop(timeout time.Duration) {
	s.hs.Shutdown()
	done := make(chan struct{})
	go func() { s.gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		s.gs.Stop()
	}
}

// backendFlags are the gateway's flags for a grpc:// backend's link.
type backendFlags struct {
	secret         *string
	tls            remote.TLSFiles
	allowPlaintext *bool
}

func addBackendFlags(fs *flag.FlagSet) *backendFlags {
	bf := &backendFlags{
		secret:         fs.String("backend-secret", "", "grpc:// backend: file with the logic's shared secret (default <data>/logic.secret, created 0600 if absent: the same file as the logic's --secret)"),
		allowPlaintext: fs.Bool("backend-allow-plaintext", false, "grpc:// backend: allow instances off this host without TLS (the secret then crosses the network in clear)"),
	}
	fs.StringVar(&bf.tls.CA, "backend-tls-ca", "", "grpc:// backend: use TLS, verifying the logic's certificate with this CA (PEM)")
	fs.StringVar(&bf.tls.Cert, "backend-tls-cert", "", "grpc:// backend: client certificate for mutual TLS (PEM)")
	fs.StringVar(&bf.tls.Key, "backend-tls-key", "", "grpc:// backend: private key for --backend-tls-cert")
	fs.StringVar(&bf.tls.ServerName, "backend-tls-server-name", "", "grpc:// backend: name to check the logic's certificate against (default: the address's host)")
	return bf
}

// clientAuth loads the secret and TLS settings for a remote.Client.
func (bf *backendFlags) clientAuth(log *slog.Logger, dataDir string) (remote.ClientAuth, string, error) {
	path := *bf.secret
	if path == "" {
		path = filepath.Join(dataDir, remote.SecretFile)
	}
	secret, created, err := remote.LoadOrCreateSecret(path)
	if err != nil {
		return remote.ClientAuth{}, path, err
	}
	if created {
		log.Warn("created a logic secret: the logic must use the same file (--secret), or its calls are refused", "file", path)
	}
	ca := remote.ClientAuth{Secret: secret, AllowPlaintext: *bf.allowPlaintext}
	if bf.tls.Enabled() {
		if ca.TLS, err = remote.ClientTLS(bf.tls); err != nil {
			return ca, path, err
		}
	}
	return ca, path, nil
}

// gatewayBackend is what a gateway process's --backend names.
type gatewayBackend struct {
	be         backend.Backend        // for this process's gateway (nil in a supervisor)
	collectors []prometheus.Collector // for this process's registry
	workerArgs []string               // appended to the workers' arguments by a supervisor
	runDir     string                 // a supervisor's private run directory (0700)
	close      func()
}

// backendSetup is what openGatewayBackend needs to know.
type backendSetup struct {
	spec, dataDir string
	hub           *push.Hub
	supervisor    bool // this process supervises --workers
	worker        bool // this process is a worker (the supervisor already said it all)
	flags         *backendFlags
}

// openGatewayBackend opens --backend for a gateway process:
//
//   - "embedded": the reference logic on <data>/logic.db, notifying through
//     this host's push hub. A single process runs it in-process. With
//     --workers N the supervisor runs it (bbolt allows one process per file,
//     and every worker must see the same users' data) and serves it to its
//     workers over gRPC on a unix socket in its 0700 run directory, behind a
//     fresh secret in a 0600 file there; it passes both to its workers as
//     --backend and --backend-secret.
//   - "echo": the test backend (methods echo and time only).
//   - "grpc://host:port[,host:port…]": a pool of remote logic instances,
//     every call carrying the secret of --backend-secret (TLS with the
//     --backend-tls-* flags). The first process logs each instance and
//     whether it answers.
func openGatewayBackend(log *slog.Logger, bs backendSetup) (*gatewayBackend, error) {
	gb := &gatewayBackend{close: func() {}}
	if bs.supervisor {
		dir, err := supervisor.NewRunDir(bs.dataDir)
		if err != nil {
			return nil, err
		}
		gb.runDir = dir
	}
	fail := func(err error) (*gatewayBackend, error) {
		if gb.runDir != "" {
			os.RemoveAll(gb.runDir)
		}
		return nil, err
	}
	switch {
	case bs.spec == "echo":
		if !bs.supervisor {
			gb.be = backend.NewEmbedded()
		}
		return gb, nil
	case strings.HasPrefix(bs.spec, "grpc://"):
		addrs, err := remote.ParseURL(bs.spec)
		if err != nil {
			return fail(err)
		}
		ca, secretPath, err := bs.flags.clientAuth(log, bs.dataDir)
		if err != nil {
			return fail(fmt.Errorf("--backend %s: %w", bs.spec, err))
		}
		c, err := remote.NewClient(remote.Config{Addrs: addrs, Logger: log, Auth: ca})
		if err != nil {
			return fail(fmt.Errorf("--backend %s: %w", bs.spec, err))
		}
		if !bs.worker {
			go probeBackend(log, c, secretPath, ca.TLS != nil, bs.supervisor)
		}
		if bs.supervisor {
			return gb, nil // each worker opens its own pool; this one only probes
		}
		gb.be, gb.collectors, gb.close = c, c.Collectors(), func() { c.Close() }
		return gb, nil
	case bs.spec != "embedded":
		return fail(fmt.Errorf("--backend %q: want embedded, echo or grpc://host:port[,…]", bs.spec))
	}
	var notifier logic.Notifier
	if bs.hub != nil {
		notifier = logic.RouterNotifier{Router: bs.hub.Router()}
	}
	path := filepath.Join(bs.dataDir, "logic.db")
	l, err := logic.Open(path, logic.Config{Notifier: notifier, Logger: log})
	if err != nil {
		return fail(err)
	}
	if !bs.supervisor {
		log.Info("embedded logic", "db", path)
		gb.be, gb.collectors, gb.close = l, l.Collectors(), func() { l.Close() }
		return gb, nil
	}
	secretPath := filepath.Join(gb.runDir, remote.SecretFile)
	secret, _, err := remote.LoadOrCreateSecret(secretPath) // new: the run directory is new
	if err != nil {
		l.Close()
		return fail(err)
	}
	sock := filepath.Join(gb.runDir, "logic.sock")
	ln, err := listenLogic("unix:"+sock, false, false)
	if err != nil {
		l.Close()
		return fail(err)
	}
	gs, err := serveLogic(ln, l, 0, remote.ServerAuth{Secret: secret, Logger: log})
	if err != nil {
		ln.Close()
		l.Close()
		return fail(err)
	}
	log.Info("embedded logic in the supervisor", "db", path, "workers_reach_it_at", "unix:"+sock)
	gb.collectors = l.Collectors()
	gb.workerArgs = []string{"--backend", "grpc://unix:" + sock, "--backend-secret", secretPath}
	gb.close = func() {
		gs.stop(5 * time.Second)
		l.Close()
	}
	return gb, nil
}

// probeBackend logs each logic instance and whether it answers an
// authenticated ping, naming what failed.
func probeBackend(log *slog.Logger, c *remote.Client, secretPath string, tls, closeAfter bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, r := range c.Probe(ctx) {
		if r.Err == nil {
			log.Info("logic backend reachable", "instance", r.Addr, "tls", tls, "secret", secretPath)
		} else {
			log.Warn("logic backend not reachable at start-up; calls to it fail until it answers", "instance", r.Addr, "tls", tls, "secret", secretPath, "err", r.Err)
		}
	}
	if closeAfter {
		c.Close()
	}
}

// storeTLSFlags are the replicated store's TLS settings (its NATS cluster is
// usually on other hosts: plaintext off loopback is refused).
type storeTLSFlags struct{ ca, cert, key *string }

func addStoreTLSFlags(fs *flag.FlagSet) storeTLSFlags {
	return storeTLSFlags{
		ca:   fs.String("store-tls-ca", "", "nats:// store: CA certificate(s) of the NATS servers (turns TLS on)"),
		cert: fs.String("store-tls-cert", "", "nats:// store: client certificate for mutual TLS"),
		key:  fs.String("store-tls-key", "", "nats:// store: private key for --store-tls-cert"),
	}
}

func (f storeTLSFlags) apply(o logic.StoreOptions) logic.StoreOptions {
	o.TLSCA, o.TLSCert, o.TLSKey = *f.ca, *f.cert, *f.key
	return o
}
