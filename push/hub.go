package push

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/longlink/longlink/proto/pb"
)

// EmbeddedConfig configures an in-process NATS server.
type EmbeddedConfig struct {
	Listen        string   // client listener host:port (port 0: any free port)
	Name          string   // server name (default: derived from the listener)
	ClusterListen string   // optional host:port for cluster routes
	Routes        []string // optional nats-route://host:port of the other cluster members
	JetStreamDir  string   // non-empty: enable JetStream, storing streams here (shake's durable queue)
}

// StartEmbedded runs a NATS server inside this process and waits until it
// accepts clients.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	host, port, err := splitHostPort(cfg.Listen, "127.0.0.1", 4222)
	if err != nil {
		return nil, fmt.Errorf("push: NATS listen %q: %w", cfg.Listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: cfg.Name, Host: host, Port: port,
		NoSigs: true, NoLog: true,
		MaxPayload:    4 << 20,
		MaxPending:    256 << 20,
		WriteDeadline: 10 * time.Second,
	}
	if cfg.JetStreamDir != "" {
		opts.JetStream, opts.StoreDir = true, cfg.JetStreamDir
	}
	if cfg.ClusterListen != "" {
		ch, cp, err := splitHostPort(cfg.ClusterListen, "127.0.0.1", 6222)
		if err != nil {
			return nil, fmt.Errorf("push: NATS cluster listen %q: %w", cfg.ClusterListen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: "longlink", Host: ch, Port: cp}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("push: NATS route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("push: embedded NATS server did not start")
	}
	return ns, nil
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
	return h, port, err
}

// HubConfig configures a Hub: the per-host part of push.
type HubConfig struct {
	NATS          string // external NATS URLs (comma-separated); empty runs an embedded server
	NATSListen    string // embedded server's client listener (default 127.0.0.1:4222; port 0 picks one)
	JetStreamDir  string // embedded server: enable JetStream with this store directory (empty: off)
	GRPCListen    string // PushService listener; empty: no gRPC
	BroadcastRate float64
	Grace         time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Hub is what one gateway host runs once, whatever its number of workers:
// the embedded NATS server (unless an external cluster is used), the router
// with its registry, and the gRPC PushService.
type Hub struct {
	ns     *server.Server
	nc     *nats.Conn
	router *Router
	grpc   *grpc.Server
	gaddr  string
	url    string
}

// StartHub starts the hub.
func StartHub(cfg HubConfig) (*Hub, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &Hub{url: cfg.NATS}
	var err error
	var opts []nats.Option
	if cfg.NATS == "" {
		if h.ns, err = StartEmbedded(EmbeddedConfig{Listen: cfg.NATSListen, JetStreamDir: cfg.JetStreamDir}); err != nil {
			return nil, err
		}
		h.url = h.ns.ClientURL()
		opts = append(opts, nats.InProcessServer(h.ns))
	}
	h.nc, err = Connect(h.url, "longlink-router", cfg.Logger, append(opts, nats.ReconnectHandler(func(*nats.Conn) {
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
		return nil, err
	}
	if cfg.GRPCListen != "" {
		ln, err := net.Listen("tcp", cfg.GRPCListen)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("push: gRPC listen: %w", err)
		}
		h.gaddr = ln.Addr().String()
		h.grpc = grpc.NewServer()
		pb.RegisterPushServiceServer(h.grpc, &service{r: h.router})
		go func() { _ = h.grpc.Serve(ln) }()
	}
	return h, nil
}

// NATSURL is the NATS URL(s) workers should connect to.
func (h *Hub) NATSURL() string { return h.url }

// GRPCAddr is the bound PushService address ("" without gRPC).
func (h *Hub) GRPCAddr() string { return h.gaddr }

// Router returns the hub's router.
func (h *Hub) Router() *Router { return h.router }

// Close stops gRPC, the router and the embedded server.
func (h *Hub) Close() {
	if h.grpc != nil {
		h.grpc.Stop()
	}
	if h.router != nil {
		h.router.Close()
	}
	if h.nc != nil {
		h.nc.Close()
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
