package push

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process NATS server.
type EmbeddedConfig struct {
	Listen        string   // client listener host:port (port 0: any free port)
	Name          string   // server name (default: derived from the listener)
	ClusterListen string   // optional host:port for cluster routes
	Routes        []string // optional nats-route://host:port of the other cluster members
	JetStreamDir  string   // non-empty: enable JetStream, storing streams here (shake's durable queue)
	MaxStore      int64    // JetStream file storage limit in bytes (0: what the disk has)

	// Secret turns on authentication: one user per Role with its
	// permissions, passwords derived from it (routes too). Without it the
	// server accepts anyone, which is allowed only on a loopback listener
	// (tests); StartHub always sets one.
	Secret Secret
	// PlaintextOK allows a non-loopback listener without TLS.
	PlaintextOK bool
	// TLS, when set, serves the client listener with TLS (a standalone
	// node, `longlink nats`); TLSVerify also asks clients for certificates.
	TLS       *tls.Config
	TLSVerify bool
	// ClusterTLS, when set, secures the routes (both directions).
	ClusterTLS *tls.Config
	// Monitor is an optional host:port for nats-server's HTTP monitoring
	// (/varz, /jsz, /healthz).
	Monitor string
	Logger  *slog.Logger // nats-server's log (default slog.Default()); notices at debug
}

// StartEmbedded runs a NATS server inside this process and waits until it
// accepts clients. A listener it cannot open is an error at once, naming
// the address.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	ns, _, err := startEmbedded(cfg)
	return ns, err
}

func startEmbedded(cfg EmbeddedConfig) (*server.Server, *natsLogger, error) {
	host, port, err := splitHostPort(cfg.Listen, "127.0.0.1", 4222)
	if err != nil {
		return nil, nil, fmt.Errorf("push: NATS listen %q: %w", cfg.Listen, err)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	loop := isLoopbackHost(host)
	if !loop && !cfg.PlaintextOK && cfg.TLS == nil {
		return nil, nil, fmt.Errorf("push: embedded NATS listen %s: not a loopback address, and the embedded server has no TLS (use an external NATS cluster with TLS, or --nats-plaintext-ok on a private network)", addr)
	}
	if cfg.Secret == nil && !loop {
		return nil, nil, fmt.Errorf("push: embedded NATS listen %s without authentication: only on loopback", addr)
	}
	if port != 0 { // say which address is taken now, not after a 10 s wait
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("push: embedded NATS cannot listen on %s: %w", addr, err)
		}
		_ = ln.Close()
	} else {
		port = server.RANDOM_PORT
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	opts := &server.Options{
		ServerName: cfg.Name, Host: host, Port: port,
		NoSigs: true, NoLog: true, // our logger is set below
		MaxPayload:    4 << 20,
		MaxPending:    256 << 20,
		WriteDeadline: 10 * time.Second,
	}
	if cfg.TLS != nil {
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = cfg.TLS, true, cfg.TLSVerify, 5
	}
	if cfg.Monitor != "" {
		mh, mp, err := splitHostPort(cfg.Monitor, "127.0.0.1", 8222)
		if err != nil {
			return nil, nil, fmt.Errorf("push: NATS monitor listen %q: %w", cfg.Monitor, err)
		}
		opts.HTTPHost, opts.HTTPPort = mh, mp
	}
	if cfg.Secret != nil {
		if opts.Users, err = cfg.Secret.users(); err != nil {
			return nil, nil, err
		}
	}
	if cfg.JetStreamDir != "" {
		opts.JetStream, opts.StoreDir = true, cfg.JetStreamDir
		if cfg.MaxStore > 0 {
			opts.JetStreamMaxStore = cfg.MaxStore
		}
	}
	if cfg.ClusterListen != "" {
		ch, cp, err := splitHostPort(cfg.ClusterListen, "127.0.0.1", 6222)
		if err != nil {
			return nil, nil, fmt.Errorf("push: NATS cluster listen %q: %w", cfg.ClusterListen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: "longlink", Host: ch, Port: cp}
		// A partitioned peer (packets dropped, no reset) keeps its route,
		// and the interest behind it, until pings go unanswered: with the
		// server's default of 2 min x 2 a cut host swallowed the requests
		// routed to it (JetStream direct gets) for over a minute. 5 s x 3.
		opts.PingInterval, opts.MaxPingsOut = 5*time.Second, 3
		if cfg.ClusterTLS != nil {
			opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = cfg.ClusterTLS, 5
		}
		var routeUser *url.Userinfo
		if cfg.Secret != nil { // routes authenticate too: a route may publish anything
			opts.Cluster.Username, opts.Cluster.Password = "route", cfg.Secret.Password("route")
			routeUser = url.UserPassword("route", cfg.Secret.Password("route"))
		}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, nil, fmt.Errorf("push: NATS route %q: %w", r, err)
			}
			if u.User == nil {
				u.User = routeUser
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("push: embedded NATS on %s: %w", addr, err)
	}
	nl := newNATSLogger(cfg.Logger)
	ns.SetLogger(nl, false, false)
	go ns.Start()
	deadline := time.Now().Add(10 * time.Second)
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		if err := nl.fatalErr(); err != nil {
			ns.Shutdown()
			return nil, nil, fmt.Errorf("push: embedded NATS on %s did not start: %w", addr, err)
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return nil, nil, fmt.Errorf("push: embedded NATS on %s did not start within 10s", addr)
		}
	}
	return ns, nl, nil
}

func splitHostPort(hp, defHost string, defPort int) (string, int, error) {
	if hp == "" {
		return defHost, defPort, nil
	}
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	if h == "" {
		h = "0.0.0.0"
	}
	port, err := strconv.Atoi(p)
	if err == nil && (port < 0 || port > 65535) {
		err = errors.New("port out of range")
	}
	return h, port, err
}

func isLoopbackHost(h string) bool {
	ip := net.ParseIP(h)
	return h == "localhost" || ip != nil && ip.IsLoopback()
}
