package push

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/longlink/longlink/proto/pb"
)

// HubConfig configures a Hub: the per-host part of push.
type HubConfig struct {
	NATS         string     // external NATS URLs (comma-separated); empty runs an embedded server
	NATSAuth     ClientAuth // how the hub's connection to an external NATS authenticates (RoleRouter)
	NATSListen   string     // embedded server's client listener (default 127.0.0.1:4222; port 0 picks one)
	Secret       Secret     // embedded server's host secret (nil: a random one, known only to this process)
	PlaintextOK  bool       // embedded server: allow a non-loopback listener
	JetStreamDir string     // embedded server: enable JetStream with this store directory (empty: off)
	MaxStore     int64      // embedded JetStream's storage limit in bytes (0: the disk)
	// JetStreamProbe: with an external NATS, readiness also asks JetStream
	// (account info) — set when something here depends on it (shake).
	JetStreamProbe bool

	GRPCListen              string   // PushService listener; empty: no gRPC
	PushTokens              []string // bearer tokens PushService accepts (required with GRPCListen)
	GRPCTLSCert, GRPCTLSKey string   // PushService TLS (needed for a non-loopback GRPCListen)

	BroadcastRate float64
	Grace         time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	ProbeEvery    time.Duration // embedded JetStream: readiness probe and recovery period (default 2s)
}

// Hub is what one gateway host runs once, whatever its number of workers:
// the embedded NATS server (unless an external cluster is used), the router
// with its registry, and the gRPC PushService.
//
// Push is advisory: an unreachable NATS does not stop the hub from
// starting; it retries in the background and Ready says why it is not.
type Hub struct {
	cfg    HubConfig
	log    *slog.Logger
	ns     *server.Server
	nl     *natsLogger
	nc     *nats.Conn
	router *Router
	grpc   *grpc.Server
	health *health.Server
	gaddr  string
	url    string
	secret Secret

	probe     *nats.Conn // embedded JetStream: an admin connection for the probe stream
	jsErr     atomic.Pointer[string]
	stuck     string    // the write error JetStream is stuck on (probe goroutine only)
	restarted time.Time // last JetStream restart (probe goroutine only)
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOne  sync.Once
}

// StartHub starts the hub.
func StartHub(cfg HubConfig) (*Hub, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ProbeEvery <= 0 {
		cfg.ProbeEvery = 2 * time.Second
	}
	if cfg.GRPCListen != "" && len(cfg.PushTokens) == 0 {
		return nil, errors.New("push: PushService needs at least one token (HubConfig.PushTokens)")
	}
	h := &Hub{cfg: cfg, log: cfg.Logger, url: cfg.NATS, stop: make(chan struct{})}
	var err error
	var opts []nats.Option
	auth := cfg.NATSAuth
	if cfg.NATS == "" {
		h.secret = cfg.Secret
		if h.secret == nil {
			h.secret = make(Secret, 32)
			_, _ = rand.Read(h.secret)
		}
		if h.ns, h.nl, err = startEmbedded(EmbeddedConfig{Listen: cfg.NATSListen, JetStreamDir: cfg.JetStreamDir, MaxStore: cfg.MaxStore,
			Secret: h.secret, PlaintextOK: cfg.PlaintextOK, Logger: cfg.Logger}); err != nil {
			return nil, err
		}
		h.url = h.ns.ClientURL()
		opts = append(opts, nats.InProcessServer(h.ns))
		auth = ClientAuth{Secret: h.secret}
	}
	h.nc, err = Connect(h.url, "longlink-router", cfg.Logger, append(opts, auth.As(RoleRouter), nats.ReconnectHandler(func(*nats.Conn) {
		if h.router != nil {
			h.router.Resync()
		}
	}))...)
	if err != nil {
		h.Close()
		return nil, err
	}
	h.router, err = NewRouter(RouterConfig{Conn: h.nc, BroadcastRate: cfg.BroadcastRate, Grace: cfg.Grace, Logger: cfg.Logger, Registerer: cfg.Registerer})
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("push: router on NATS %s: %w", RedactURLs(h.url), err)
	}
	if h.ns != nil && cfg.JetStreamDir != "" {
		if h.probe, err = Connect(h.url, "longlink-probe", cfg.Logger, nats.InProcessServer(h.ns), ClientAuth{Secret: h.secret}.As(RoleAdmin)); err != nil {
			h.Close()
			return nil, err
		}
		h.probeJetStream() // the first verdict before anyone asks
		h.wg.Add(1)
		go h.watchJetStream()
	}
	if h.ns == nil && cfg.JetStreamProbe {
		h.wg.Add(1)
		go h.watchExternalJetStream()
	}
	if cfg.GRPCListen != "" {
		if err := h.serveGRPC(); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

// NATSURL is the NATS URL(s) workers should connect to.
func (h *Hub) NATSURL() string { return h.url }

// Secret is the embedded server's secret (nil with an external NATS).
func (h *Hub) Secret() Secret { return h.secret }

// Auth is the option that authenticates another connection of this host
// to the hub's NATS as role r (workers, openers, tests).
func (h *Hub) Auth(r Role) nats.Option {
	if h.secret != nil {
		return ClientAuth{Secret: h.secret}.As(r)
	}
	return h.cfg.NATSAuth.As(r)
}

// GRPCAddr is the bound PushService address ("" without gRPC).
func (h *Hub) GRPCAddr() string { return h.gaddr }

// Router returns the hub's router.
func (h *Hub) Router() *Router { return h.router }

// Ready reports whether push can work now: nil, or the reason it cannot
// ("nats: disconnected <addr>", a JetStream write failure, ...). Cheap: the
// JetStream verdict comes from the background probe.
func (h *Hub) Ready() error {
	if h == nil || h.nc == nil {
		return errors.New("push: not started")
	}
	if err := connReady(h.nc, h.url); err != nil {
		return err
	}
	if p := h.jsErr.Load(); p != nil {
		return errors.New(*p)
	}
	return nil
}

// connReady is nil when nc is connected, else the reason naming the address.
func connReady(nc *nats.Conn, urls string) error {
	switch nc.Status() {
	case nats.CONNECTED:
		return nil
	case nats.CLOSED:
		if err := nc.LastError(); err != nil {
			return fmt.Errorf("nats: closed %s: %v", RedactURLs(urls), err)
		}
		return fmt.Errorf("nats: closed %s", RedactURLs(urls))
	}
	if err := nc.LastError(); err != nil {
		return fmt.Errorf("nats: disconnected %s: %v", RedactURLs(urls), err)
	}
	return fmt.Errorf("nats: disconnected %s", RedactURLs(urls))
}

const probeStream, probeSubject = "LONGLINK_PROBE", "longlink.probe"

// probeJetStream does one JetStream write round trip (a publish to a
// one-message probe stream) and records the verdict. A write error anywhere
// (a full disk leaves a stream's file store with a sticky write error, seen
// in the nats-server log or in the probe) makes the hub not ready, and once
// the store's file system has room again JetStream is restarted, which
// reloads every stream from disk: what a server restart did, without one.
func (h *Hub) probeJetStream() {
	if w := h.nl.takeWriteErr(); w != "" {
		h.stuck = w
	}
	if h.stuck == "" {
		err := h.jsPublish()
		if err == nil {
			if h.jsErr.Swap(nil) != nil {
				h.log.Info("push: JetStream writes work again")
			}
			return
		}
		if !writeErr(err) && h.ns.JetStreamEnabled() {
			h.setJSErr("jetstream: " + err.Error()) // a slow moment, or worse: the next probe decides
			return
		}
		h.stuck = err.Error()
	}
	h.setJSErr("jetstream: write failed: " + h.stuck)
	if free, ok := diskFree(h.cfg.JetStreamDir); ok && free < minFreeForRestart {
		return // wait for space
	}
	if time.Since(h.restarted) < 10*time.Second {
		return // a store that fails for another reason must not be reloaded every probe
	}
	h.restarted = time.Now()
	h.log.Warn("push: restarting JetStream to clear a write error", "store", h.cfg.JetStreamDir, "err", h.stuck)
	if h.ns.JetStreamEnabled() {
		if err := h.ns.ShutdownJetStream(); err != nil {
			h.log.Warn("push: JetStream shutdown", "err", err)
		}
	}
	jc := &server.JetStreamConfig{StoreDir: h.cfg.JetStreamDir, MaxStore: h.cfg.MaxStore}
	if err := h.ns.EnableJetStream(jc); err != nil {
		h.log.Error("push: JetStream restart failed; retrying", "err", err)
		return
	}
	h.stuck = ""
	h.nl.takeWriteErr() // whatever the old stores said on the way down
	if err := h.jsPublish(); err == nil {
		h.jsErr.Store(nil)
		h.log.Info("push: JetStream restarted; writes work again")
	}
}

// minFreeForRestart is the free space a JetStream restart waits for.
const minFreeForRestart = 1 << 20

func diskFree(dir string) (uint64, bool) {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}

func (h *Hub) setJSErr(reason string) {
	if old := h.jsErr.Swap(&reason); old == nil || *old != reason {
		h.log.Error("push: JetStream not ready", "reason", reason, "store", h.cfg.JetStreamDir)
	}
}

func writeErr(err error) bool {
	s := err.Error()
	return strings.Contains(s, "no space left") || strings.Contains(s, "write error") || strings.Contains(s, "not enabled")
}

func (h *Hub) jsPublish() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	js, err := jetstream.New(h.probe)
	if err != nil {
		return err
	}
	if _, err = js.Publish(ctx, probeSubject, []byte("probe")); err == nil {
		return nil
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		_, cerr := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: probeStream, Subjects: []string{probeSubject},
			Storage: jetstream.FileStorage, MaxMsgs: 1, Discard: jetstream.DiscardOld, MaxBytes: 1 << 16})
		if cerr != nil {
			return cerr
		}
		_, err = js.Publish(ctx, probeSubject, []byte("probe"))
	}
	return err
}

func (h *Hub) watchJetStream() {
	defer h.wg.Done()
	t := time.NewTicker(h.cfg.ProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.probeJetStream()
		}
	}
}

// watchExternalJetStream asks an external cluster's JetStream for the
// account's info every ProbeEvery: the hub cannot write a probe stream
// there (no admin rights), but a JetStream that does not answer is seen.
func (h *Hub) watchExternalJetStream() {
	defer h.wg.Done()
	t := time.NewTicker(h.cfg.ProbeEvery)
	defer t.Stop()
	for {
		if h.nc.IsConnected() {
			js, err := jetstream.New(h.nc)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err = js.AccountInfo(ctx)
				cancel()
			}
			if err != nil {
				h.setJSErr(fmt.Sprintf("jetstream at %s: %v", RedactURLs(h.url), err))
			} else if h.jsErr.Swap(nil) != nil {
				h.log.Info("push: JetStream answers again", "nats", RedactURLs(h.url))
			}
		}
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
	}
}

func (h *Hub) serveGRPC() error {
	ln, err := net.Listen("tcp", h.cfg.GRPCListen)
	if err != nil {
		return fmt.Errorf("push: PushService cannot listen on %s: %w", h.cfg.GRPCListen, err)
	}
	h.gaddr = ln.Addr().String()
	sopts := []grpc.ServerOption{grpc.UnaryInterceptor(tokenInterceptor(h.cfg.PushTokens)), grpc.StreamInterceptor(tokenStreamInterceptor(h.cfg.PushTokens))}
	if h.cfg.GRPCTLSCert != "" || h.cfg.GRPCTLSKey != "" {
		tc, err := credentials.NewServerTLSFromFile(h.cfg.GRPCTLSCert, h.cfg.GRPCTLSKey)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("push: PushService TLS: %w", err)
		}
		sopts = append(sopts, grpc.Creds(tc))
	} else if host, _, _ := net.SplitHostPort(h.gaddr); !isLoopbackHost(host) {
		h.log.Warn("push: PushService listens beyond loopback WITHOUT TLS: its bearer tokens cross the network in the clear (set --push-grpc-tls-cert/--push-grpc-tls-key)", "addr", h.gaddr)
	}
	h.grpc = grpc.NewServer(sopts...)
	pb.RegisterPushServiceServer(h.grpc, &service{r: h.router})
	h.health = health.NewServer()
	healthpb.RegisterHealthServer(h.grpc, h.health)
	h.setHealth()
	h.wg.Add(1)
	go func() { // the health service follows readiness
		defer h.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-t.C:
				h.setHealth()
			}
		}
	}()
	go func() { _ = h.grpc.Serve(ln) }()
	return nil
}

func (h *Hub) setHealth() {
	st := healthpb.HealthCheckResponse_SERVING
	if h.Ready() != nil {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	h.health.SetServingStatus("", st)
	h.health.SetServingStatus(pb.PushService_ServiceDesc.ServiceName, st)
}

// Close stops gRPC, the router and the embedded server.
func (h *Hub) Close() {
	h.closeOne.Do(func() { close(h.stop) })
	if h.grpc != nil {
		h.grpc.Stop()
	}
	h.wg.Wait()
	if h.router != nil {
		h.router.Close()
	}
	if h.nc != nil {
		h.nc.Close()
	}
	if h.probe != nil {
		h.probe.Close()
	}
	if h.ns != nil {
		h.ns.Shutdown()
		h.ns.WaitForShutdown()
	}
}

// service is the gRPC PushService over a Router.
type service struct {
	pb.UnimplementedPushServiceServer
	r *Router
}

func grpcErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrRateLimited):
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

func (s *service) Notify(_ context.Context, q *pb.NotifyRequest) (*pb.PushReply, error) {
	s.r.m.requests.WithLabelValues("notify", "grpc").Inc()
	rep, err := s.r.Notify(q.Uid, q.Device, q.Type, q.Version, q.Payload)
	return rep, grpcErr(err)
}

func (s *service) Multicast(_ context.Context, q *pb.MulticastRequest) (*pb.PushReply, error) {
	s.r.m.requests.WithLabelValues("multicast", "grpc").Inc()
	rep, err := s.r.Multicast(q.Uids, q.Type, q.Version, q.Payload)
	return rep, grpcErr(err)
}

func (s *service) Broadcast(_ context.Context, q *pb.BroadcastRequest) (*pb.PushReply, error) {
	s.r.m.requests.WithLabelValues("broadcast", "grpc").Inc()
	rep, err := s.r.Broadcast(q.Type, q.Version, q.Payload)
	return rep, grpcErr(err)
}
