package main

import (
	"flag"
	"log/slog"
	"time"

	"github.com/longlink/longlink/push"
)

// pushFlags are the gateway's push options that only the top process (the
// one process, or the supervisor) uses; --nats and --push-window go to
// gateway.Config.
type pushFlags struct {
	on            *bool
	natsListen    *string
	grpc          *string
	broadcastRate *float64
	grace         *time.Duration
}

func addPushFlags(fs *flag.FlagSet) pushFlags {
	return pushFlags{
		on:            fs.Bool("push", true, "serve the push API (gRPC PushService and NATS subjects) and deliver notifies"),
		natsListen:    fs.String("nats-listen", "127.0.0.1:4222", "client address of the embedded NATS server (used when --nats is empty; port 0 picks one)"),
		grpc:          fs.String("push-grpc", "127.0.0.1:7102", "PushService gRPC address, one per host whatever --workers; empty disables"),
		broadcastRate: fs.Float64("push-broadcast-rate", 10, "broadcasts to everyone allowed per second (per host's router)"),
		grace:         fs.Duration("push-grace", 2*time.Second, "replay recent notifies to a node a user connected to this recently (closes the connect/notify race); negative disables"),
	}
}

// startPushHub starts the embedded NATS server (unless nats names an external
// cluster), the router and the gRPC PushService.
func startPushHub(log *slog.Logger, pf pushFlags, nats string) (*push.Hub, error) {
	h, err := push.StartHub(push.HubConfig{
		NATS: nats, NATSListen: *pf.natsListen, GRPCListen: *pf.grpc,
		BroadcastRate: *pf.broadcastRate, Grace: *pf.grace, Logger: log,
		JetStreamDir: hubJetStreamDir,
	})
	if err != nil {
		return nil, err
	}
	where := "external"
	if nats == "" {
		where = "embedded"
	}
	log.Info("push hub started", "nats", h.NATSURL(), "nats_server", where, "grpc", h.GRPCAddr())
	return h, nil
}
