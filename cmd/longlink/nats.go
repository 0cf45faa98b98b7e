package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/push"
)

const natsSummary = "run a standalone NATS node (JetStream, longlink's role authentication from nats.secret) for a fleet's NATS cluster"

func init() { register(command{name: "nats", summary: natsSummary, run: runNATS}) }

// runNATS is `longlink nats`: one member of the fleet's NATS cluster. It is
// the embedded server of a gateway (push.StartEmbedded: one user per role,
// passwords derived from the shared nats.secret, routes authenticated with
// the derived "route" password) as a process of its own, with TLS, so
// operators run three of them on three hosts (docs/fleet.md).
func runNATS(args []string) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	return natsMain(args, sig)
}

func natsMain(args []string, stop <-chan os.Signal) int {
	fs := newFlagSet("nats", natsSummary+"\n\nGive every node of a cluster the same nats.secret (copy it from the first node's --data),\nand the gateways/logic the same file as --nats-secret.")
	var (
		listen        = fs.String("listen", "127.0.0.1:4222", "client address (gateways' --nats nats://host:port); off loopback it needs --tls-cert/--tls-key or --plaintext-ok")
		name          = fs.String("name", "", "server name, unique and stable in the cluster (JetStream peers are known by it; default <hostname>-<client port>)")
		dataDir       = fs.String("data", auth.DefaultDataDir(), "data directory: nats.secret (created 0600 if absent) and, unless --store-dir, the JetStream store in nats/")
		secretFile    = fs.String("secret", "", "the shared NATS secret (default <data>/nats.secret)")
		storeDir      = fs.String("store-dir", "", "JetStream store directory (default <data>/nats)")
		maxStore      = fs.Int64("max-store", 0, "JetStream file storage limit in bytes (0: what the disk has)")
		clusterListen = fs.String("cluster-listen", "", "route address for the other cluster members, host:port (empty: a single node)")
		routes        = fs.String("routes", "", "the other members' route addresses, comma-separated host:port or nats-route://host:port")
		monitor       = fs.String("monitor", "", "HTTP monitoring address (/healthz, /varz, /jsz); empty disables")
		tlsCert       = fs.String("tls-cert", "", "serve clients with TLS, this certificate (PEM)")
		tlsKey        = fs.String("tls-key", "", "private key for --tls-cert")
		tlsCA         = fs.String("tls-ca", "", "require client certificates signed by this CA (mutual TLS)")
		clusterCert   = fs.String("cluster-tls-cert", "", "TLS certificate for the routes (both directions; needs --cluster-tls-ca)")
		clusterKey    = fs.String("cluster-tls-key", "", "private key for --cluster-tls-cert")
		clusterCA     = fs.String("cluster-tls-ca", "", "CA that signs the other members' route certificates")
		plaintextOK   = fs.Bool("plaintext-ok", false, "allow a client listener or routes off loopback without TLS (a private network you trust)")
		logLevel      = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat     = fs.String("log-format", "text", "text or json")
	)
	if !parseFlags(fs, args) {
		return 2
	}
	log := newLogger(*logLevel, *logFormat, -1)
	cfg, err := natsNodeConfig(natsNodeFlags{
		listen: *listen, name: *name, dataDir: *dataDir, secretFile: *secretFile, storeDir: *storeDir,
		clusterListen: *clusterListen, routes: *routes, monitor: *monitor,
		tlsCert: *tlsCert, tlsKey: *tlsKey, tlsCA: *tlsCA,
		clusterCert: *clusterCert, clusterKey: *clusterKey, clusterCA: *clusterCA, plaintextOK: *plaintextOK,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink nats:", err)
		return 2
	}
	cfg.MaxStore, cfg.Logger = *maxStore, log
	secretPath := *secretFile
	if secretPath == "" {
		secretPath = filepath.Join(*dataDir, push.SecretFile)
	}
	s, created, err := push.LoadOrCreateSecret(secretPath)
	if err != nil {
		log.Error("NATS secret", "err", err)
		return 1
	}
	if created {
		log.Info("created the NATS secret: copy it to every other NATS node, gateway and logic host of this cluster", "file", secretPath)
	}
	cfg.Secret = s
	ns, err := push.StartEmbedded(cfg)
	if err != nil {
		log.Error("cannot start NATS", "err", err)
		return 1
	}
	log.Info("nats node serving", "name", cfg.Name, "client", ns.ClientURL(), "cluster", *clusterListen, "routes", *routes,
		"jetstream", cfg.JetStreamDir, "tls", cfg.TLS != nil, "cluster_tls", cfg.ClusterTLS != nil, "secret", secretPath)
	sg := <-stop
	log.Info("shutting down", "signal", sg.String())
	ns.Shutdown()
	ns.WaitForShutdown()
	return 0
}

type natsNodeFlags struct {
	listen, name, dataDir, secretFile, storeDir, clusterListen, routes, monitor string
	tlsCert, tlsKey, tlsCA, clusterCert, clusterKey, clusterCA                  string
	plaintextOK                                                                 bool
}

// natsNodeConfig checks the flags and builds the server's configuration
// (without the secret). Bad input is an error naming the flag.
func natsNodeConfig(f natsNodeFlags) (push.EmbeddedConfig, error) {
	cfg := push.EmbeddedConfig{Listen: f.listen, Name: f.name, ClusterListen: f.clusterListen, Monitor: f.monitor, PlaintextOK: f.plaintextOK}
	host, port, err := net.SplitHostPort(f.listen)
	if err != nil {
		return cfg, fmt.Errorf("--listen %q: %v", f.listen, err)
	}
	if cfg.Name == "" {
		h, _ := os.Hostname()
		cfg.Name = h + "-" + port
	}
	if strings.ContainsAny(cfg.Name, " \t.*>") {
		return cfg, fmt.Errorf("--name %q: no spaces, dots, '*' or '>'", cfg.Name)
	}
	cfg.JetStreamDir = f.storeDir
	if cfg.JetStreamDir == "" {
		cfg.JetStreamDir = filepath.Join(f.dataDir, "nats")
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return cfg, errors.New("--tls-cert and --tls-key go together")
	}
	if f.tlsCA != "" && f.tlsCert == "" {
		return cfg, errors.New("--tls-ca (client certificates) needs --tls-cert/--tls-key")
	}
	if f.tlsCert != "" {
		if cfg.TLS, err = loadTLS(f.tlsCert, f.tlsKey, f.tlsCA, false); err != nil {
			return cfg, fmt.Errorf("--tls-cert: %w", err)
		}
		cfg.TLSVerify = f.tlsCA != ""
	}
	if f.routes != "" && f.clusterListen == "" {
		return cfg, errors.New("--routes needs --cluster-listen (this node's own route address)")
	}
	if f.clusterListen != "" {
		ch, cp, err := net.SplitHostPort(f.clusterListen)
		if err != nil {
			return cfg, fmt.Errorf("--cluster-listen %q: %v", f.clusterListen, err)
		}
		if n, err := strconv.Atoi(cp); err != nil || n <= 0 || n > 65535 {
			return cfg, fmt.Errorf("--cluster-listen %q: want a port 1-65535 (the other members dial it)", f.clusterListen)
		}
		if (f.clusterCert == "") != (f.clusterKey == "") || (f.clusterCert != "") != (f.clusterCA != "") {
			return cfg, errors.New("--cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca go together")
		}
		if f.clusterCert != "" {
			if cfg.ClusterTLS, err = loadTLS(f.clusterCert, f.clusterKey, f.clusterCA, true); err != nil {
				return cfg, fmt.Errorf("--cluster-tls-cert: %w", err)
			}
		} else if !f.plaintextOK && !loopbackHost(ch) {
			return cfg, fmt.Errorf("--cluster-listen %s is not on loopback: give --cluster-tls-cert/-key/-ca, or --plaintext-ok on a private network", f.clusterListen)
		}
	}
	for _, r := range strings.Split(f.routes, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		if !strings.Contains(r, "://") {
			r = "nats-route://" + r
		}
		u := r[strings.Index(r, "://")+3:]
		if _, _, err := net.SplitHostPort(u); err != nil {
			return cfg, fmt.Errorf("--routes: %q: %v", r, err)
		}
		cfg.Routes = append(cfg.Routes, r)
	}
	if !loopbackHost(host) && cfg.TLS == nil && !f.plaintextOK {
		return cfg, fmt.Errorf("--listen %s is not on loopback: give --tls-cert/--tls-key, or --plaintext-ok on a private network", f.listen)
	}
	return cfg, nil
}

func loopbackHost(h string) bool {
	ip := net.ParseIP(h)
	return h == "localhost" || ip != nil && ip.IsLoopback()
}

// loadTLS builds a server (or, for routes, both-ways) TLS configuration; a
// CA makes the peer's certificate required and verified.
func loadTLS(certFile, keyFile, caFile string, route bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", caFile)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
		if route {
			tc.RootCAs = pool
		}
	}
	return tc, nil
}
