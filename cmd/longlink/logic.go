package main

import (
	"context"
	"errors"
	"fmt"
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

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/push"
)

const logicSummary = "serve the reference IM logic (sync, messages, groups, contacts, profile) over gRPC"

func init() {
	register(command{name: "logic", summary: logicSummary, run: runLogic})
}

func runLogic(args []string) int {
	fs := newFlagSet("logic", logicSummary)
	var (
		listen      = fs.String("listen", ":7200", "gRPC LogicService address (the gateways' --backend grpc://host:port)")
		dataDir     = fs.String("data", auth.DefaultDataDir(), "data directory; the store is logic.db in it unless --db is set")
		dbPath      = fs.String("db", "", "bbolt store file (default <data>/logic.db)")
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
	l, err := logic.Open(*dbPath, logic.Config{Notifier: notifier, Retention: *retention, Logger: log})
	if err != nil {
		log.Error("cannot open the logic store", "err", err)
		return 1
	}
	defer l.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("cannot listen", "err", err)
		return 1
	}
	gs := grpc.NewServer()
	remote.NewServer(l, *maxInflight).Register(gs)
	go func() { _ = gs.Serve(ln) }()
	if *metrics != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg.MustRegister(l.Collectors()...)
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		hs := &http.Server{Addr: *metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Warn("metrics listener", "err", err)
			}
		}()
		defer hs.Close()
	}
	log.Info("logic serving", "grpc", ln.Addr().String(), "db", *dbPath, "metrics", *metrics)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Info("shutting down", "signal", s.String())
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		gs.Stop()
	}
	return 0
}

// gatewayBackend is what a gateway process's --backend names.
type gatewayBackend struct {
	be         backend.Backend        // for this process's gateway (nil in a supervisor)
	collectors []prometheus.Collector // for this process's registry
	workerArgs []string               // appended to the workers' arguments by a supervisor
	close      func()
}

// openGatewayBackend opens --backend for a gateway process:
//
//   - "embedded": the reference logic on <data>/logic.db, notifying through
//     this host's push hub. A single process runs it in-process. With
//     --workers N the supervisor runs it (bbolt allows one process per file,
//     and every worker must see the same users' data) and serves it to its
//     workers over gRPC on a loopback port it passes them as --backend.
//   - "echo": the test backend (methods echo and time only).
//   - "grpc://host:port[,host:port…]": a pool of remote logic instances.
func openGatewayBackend(log *slog.Logger, spec, dataDir string, hub *push.Hub, supervisor bool) (*gatewayBackend, error) {
	switch {
	case spec == "echo":
		return &gatewayBackend{be: backend.NewEmbedded(), close: func() {}}, nil
	case strings.HasPrefix(spec, "grpc://"):
		if supervisor {
			return &gatewayBackend{close: func() {}}, nil // each worker opens its own pool
		}
		addrs, err := remote.ParseURL(spec)
		if err != nil {
			return nil, err
		}
		c, err := remote.NewClient(remote.Config{Addrs: addrs, Logger: log})
		if err != nil {
			return nil, err
		}
		return &gatewayBackend{be: c, collectors: c.Collectors(), close: func() { c.Close() }}, nil
	case spec != "embedded":
		return nil, fmt.Errorf("--backend %q: want embedded, echo or grpc://host:port[,…]", spec)
	}
	var notifier logic.Notifier
	if hub != nil {
		notifier = logic.RouterNotifier{Router: hub.Router()}
	}
	path := filepath.Join(dataDir, "logic.db")
	l, err := logic.Open(path, logic.Config{Notifier: notifier, Logger: log})
	if err != nil {
		return nil, err
	}
	if !supervisor {
		log.Info("embedded logic", "db", path)
		return &gatewayBackend{be: l, collectors: l.Collectors(), close: func() { l.Close() }}, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		l.Close()
		return nil, err
	}
	gs := grpc.NewServer()
	remote.NewServer(l, 0).Register(gs)
	go func() { _ = gs.Serve(ln) }()
	addr := ln.Addr().String()
	log.Info("embedded logic in the supervisor", "db", path, "workers_reach_it_at", addr)
	return &gatewayBackend{
		collectors: l.Collectors(),
		workerArgs: []string{"--backend", "grpc://" + addr},
		close: func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done := make(chan struct{})
			go func() { gs.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				gs.Stop()
			}
			l.Close()
		},
	}, nil
}
