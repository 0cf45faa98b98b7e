package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/offline"
	"github.com/longlink/longlink/offline/apns"
	"github.com/longlink/longlink/offline/fcm"
	"github.com/longlink/longlink/offline/hms"
	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/push"
)

// offlineFlags configure offline notification (docs/push.md, "Offline
// notification"): the gateway's and `longlink offline`'s.
type offlineFlags struct {
	mode                                                               *string
	delay, budget                                                      *time.Duration
	replicas, concurrency                                              *int
	rate                                                               *float64
	apnsKey, apnsKeyID, apnsTeam, apnsTopic, apnsEndpoint, apnsSandbox *string
	apnsPushType, fcmCreds, fcmProject, fcmEndpoint                    *string
	hmsAppID, hmsSecret, hmsEndpoint, hmsTokenURL                      *string
}

func addOfflineFlags(fs *flag.FlagSet, gatewayFlags bool) *offlineFlags {
	f := &offlineFlags{}
	if gatewayFlags {
		f.mode = fs.String("offline", "auto", "offline notification through APNs/FCM/HMS: off; embedded (device.register served, notifies queued, and sent from this host's top process); queue (registered and queued, sent by `longlink offline` processes); auto = embedded when a provider is configured, else off")
	} else {
		m := "embedded"
		f.mode = &m
	}
	f.delay = fs.Duration("offline-delay", 3*time.Second, "wait this long before notifying an offline device; one that reconnects by then is not notified")
	f.budget = fs.Duration("offline-budget", 10*time.Minute, "give up on an offline notification this long after its notify (retries included)")
	f.replicas = fs.Int("offline-replicas", 1, "JetStream replicas of the device bucket and the offline queue (3 on a cluster)")
	f.concurrency = fs.Int("offline-concurrency", 64, "queued notifies handled at once by a sender")
	f.rate = fs.Float64("offline-rate", 0, "provider requests per second per provider and sender (0: no limit)")
	f.apnsKey = fs.String("apns-key", "", "APNs token-auth key (.p8 file); enables APNs")
	f.apnsKeyID = fs.String("apns-key-id", "", "APNs key id (10 characters)")
	f.apnsTeam = fs.String("apns-team-id", "", "Apple developer team id")
	f.apnsTopic = fs.String("apns-topic", "", "default apns-topic (the app's bundle id) for registrations without one")
	f.apnsEndpoint = fs.String("apns-endpoint", apns.Production, "APNs endpoint")
	f.apnsSandbox = fs.String("apns-sandbox-endpoint", apns.Development, "APNs endpoint for registrations marked sandbox")
	f.apnsPushType = fs.String("apns-push-type", "alert", "apns-push-type: alert or background")
	f.fcmCreds = fs.String("fcm-credentials", "", "FCM service account key (JSON); enables FCM")
	f.fcmProject = fs.String("fcm-project", "", "FCM project id (default: the key's)")
	f.fcmEndpoint = fs.String("fcm-endpoint", fcm.Endpoint, "FCM endpoint")
	f.hmsAppID = fs.String("hms-app-id", "", "Huawei Push Kit app id; enables HMS")
	f.hmsSecret = fs.String("hms-app-secret", "", "Huawei app secret (best given as LONGLINK_HMS_APP_SECRET)")
	f.hmsEndpoint = fs.String("hms-endpoint", hms.Endpoint, "Push Kit endpoint")
	f.hmsTokenURL = fs.String("hms-token-url", hms.TokenURL, "Huawei OAuth token endpoint")
	return f
}

func (f *offlineFlags) anyProvider() bool {
	return *f.apnsKey != "" || *f.fcmCreds != "" || *f.hmsAppID != ""
}

// prepare settles --offline auto and, when offline push is on, asks for
// JetStream on the embedded NATS (the device bucket and the queue).
func (f *offlineFlags) prepare(dataDir string) error {
	switch *f.mode {
	case "auto":
		*f.mode = "off"
		if f.anyProvider() {
			*f.mode = "embedded"
		}
	case "off", "embedded", "queue":
	default:
		return fmt.Errorf("--offline %q: want auto, off, embedded or queue", *f.mode)
	}
	if *f.mode != "off" && hubJetStreamDir == "" {
		hubJetStreamDir = filepath.Join(dataDir, "jetstream")
	}
	return nil
}

func (f *offlineFlags) clients() ([]provider.Client, error) {
	var cs []provider.Client
	if *f.apnsKey != "" {
		c, err := apns.New(apns.Config{KeyFile: *f.apnsKey, KeyID: *f.apnsKeyID, TeamID: *f.apnsTeam, Topic: *f.apnsTopic,
			Endpoint: *f.apnsEndpoint, SandboxEndpoint: *f.apnsSandbox, PushType: *f.apnsPushType})
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	if *f.fcmCreds != "" {
		c, err := fcm.New(fcm.Config{CredentialsFile: *f.fcmCreds, ProjectID: *f.fcmProject, Endpoint: *f.fcmEndpoint})
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	if *f.hmsAppID != "" {
		c, err := hms.New(hms.Config{AppID: *f.hmsAppID, AppSecret: *f.hmsSecret, Endpoint: *f.hmsEndpoint, TokenURL: *f.hmsTokenURL})
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// offlineRun is what a host's top process runs for offline push.
type offlineRun struct {
	router     *push.Router
	nc         *nats.Conn
	devs       *offline.Devices
	enq        *offline.Enqueuer
	snd        *offline.Sender
	collectors []prometheus.Collector
}

func (o *offlineRun) close() {
	if o == nil {
		return
	}
	if o.router != nil {
		o.router.SetOffline(nil)
	}
	if o.snd != nil {
		o.snd.Close()
	}
	if o.enq != nil {
		o.enq.Close()
	}
	if o.devs != nil {
		o.devs.Close()
	}
	if o.nc != nil {
		o.nc.Close()
	}
}

// openOffline connects as the offline role and opens the device mirror;
// with router, the enqueuer becomes its hook; with send, a sender runs too.
func openOffline(log *slog.Logger, f *offlineFlags, urls string, router *push.Router, send bool, presence func(context.Context, uint64) ([]string, error)) (*offlineRun, error) {
	o := &offlineRun{}
	var err error
	if o.nc, err = push.Connect(urls, "longlink-offline", log, natsAuth.As(push.RoleOffline)); err != nil {
		return nil, err
	}
	js, err := jetstream.New(o.nc)
	if err != nil {
		o.close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if o.devs, err = offline.OpenDevices(ctx, js, *f.replicas, log); err != nil {
		o.close()
		return nil, err
	}
	if _, err = offline.EnsureStream(ctx, js, *f.replicas, *f.budget); err != nil {
		o.close()
		return nil, err
	}
	var online *offline.Online
	if router != nil && send { // the sender's device queries spare the queue the users whose devices are all connected
		online = offline.NewOnline(0, *f.delay+time.Second)
	}
	if router != nil {
		o.enq = offline.NewEnqueuer(offline.EnqueuerConfig{JS: js, Devices: o.devs, Delay: *f.delay, Budget: *f.budget, Online: online, Logger: log})
		o.collectors = append(o.collectors, o.enq.Collectors()...)
		router.SetOffline(o.enq)
		o.router = router
	}
	if send {
		if presence == nil { // a separate process: ask the routers
			nc := o.nc
			presence = func(ctx context.Context, uid uint64) ([]string, error) { return push.AskDevices(ctx, nc, uid) }
		}
		cs, err := f.clients()
		if err != nil {
			o.close()
			return nil, err
		}
		if len(cs) == 0 {
			log.Warn("offline: no provider configured (--apns-key, --fcm-credentials, --hms-app-id): queued notifies are dropped as no_client")
		}
		if o.snd, err = offline.NewSender(ctx, offline.SenderConfig{JS: js, Devices: o.devs, Presence: presence, Clients: cs,
			Delay: *f.delay, Budget: *f.budget, Concurrency: *f.concurrency, Rate: *f.rate, Replicas: *f.replicas, Online: online, Logger: log}); err != nil {
			o.close()
			return nil, err
		}
		o.collectors = append(o.collectors, o.snd.Collectors()...)
		names := make([]string, len(cs))
		for i, c := range cs {
			names[i] = c.Platform()
		}
		log.Info("offline sender started", "providers", strings.Join(names, ","), "delay", *f.delay)
	}
	return o, nil
}

// startOfflineHub runs offline push in the host's top process (beside the
// router): the enqueuer always, the sender unless --offline queue.
func startOfflineHub(log *slog.Logger, f *offlineFlags, hub *push.Hub) (*offlineRun, error) {
	if *f.mode == "off" || hub == nil {
		return nil, nil
	}
	r := hub.Router()
	o, err := openOffline(log, f, hub.NATSURL(), r, *f.mode == "embedded", r.Devices)
	if err != nil {
		return nil, fmt.Errorf("offline push: %w", err)
	}
	return o, nil
}

// wrapOfflineBackend serves device.register/unregister in this worker
// (before the logic), writing through the gateway role's connection.
func wrapOfflineBackend(log *slog.Logger, f *offlineFlags, cfg *gateway.Config) (func(), error) {
	if *f.mode == "off" {
		return func() {}, nil
	}
	if cfg.NATS == "" {
		log.Warn("offline: push is off (--push=false): device.register is not served")
		return func() {}, nil
	}
	nc, err := push.Connect(cfg.NATS, "longlink-devices", log, cfg.NATSOptions...)
	if err != nil {
		return nil, fmt.Errorf("offline: %w", err)
	}
	cfg.Backend = &offline.Backend{Backend: cfg.Backend, W: offline.NewWriter(nc)}
	cfg.PushLost = true // closed connections report pushes they may not have received
	return nc.Close, nil
}

const offlineSummary = "run an offline-notification sender (APNs/FCM/HMS) against a host's or a cluster's NATS; `offline switch` sets the switches"

func init() { register(command{name: "offline", summary: offlineSummary, run: runOffline}) }

// runOffline is `longlink offline [flags]` (a sender) and
// `longlink offline [flags] switch show|off|on|pause P|resume P`.
func runOffline(args []string) int {
	fs := newFlagSet("offline", offlineSummary)
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS URL(s) of the host or cluster")
	dataDir := fs.String("data", "", "data directory holding nats.secret (for a loopback NATS)")
	metrics := fs.String("metrics", "", "serve /metrics on this address (empty: off)")
	reason := fs.String("reason", "", "switch: why (audit log)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	af := addNATSAuthFlags(fs)
	f := addOfflineFlags(fs, false)
	if !parseFlags(fs, args) {
		return 2
	}
	log := newLogger(*logLevel, "text", -1)
	var err error
	if natsAuth, err = af.resolve(*natsURL, *dataDir); err != nil {
		fmt.Fprintln(os.Stderr, "longlink offline:", err)
		return 2
	}
	if rest := fs.Args(); len(rest) > 0 {
		if rest[0] != "switch" {
			fmt.Fprintf(os.Stderr, "longlink offline: unknown command %q (want switch)\n", rest[0])
			return 2
		}
		return runOfflineSwitch(log, f, *natsURL, rest[1:], *reason)
	}
	o, err := openOffline(log, f, *natsURL, nil, true, nil)
	if err == nil {
		defer o.close()
	} else {
		log.Error("cannot start the offline sender", "err", err)
		return 1
	}
	if *metrics != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(o.collectors...)
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: *metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener", "err", err)
			}
		}()
		defer srv.Close()
	}
	waitSignal()
	return 0
}

// runOfflineSwitch reads or sets the fleet's offline switches (audited:
// logged here, and by every sender that applies the change).
func runOfflineSwitch(log *slog.Logger, f *offlineFlags, urls string, args []string, reason string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: longlink offline [--reason TEXT] switch show|off|on|pause PROVIDER|resume PROVIDER")
		return 2
	}
	nc, err := push.Connect(urls, "longlink-offline-switch", log, natsAuth.As(push.RoleOffline))
	if err != nil {
		log.Error("NATS", "err", err)
		return 1
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sw, err := offline.GetSwitches(ctx, js, *f.replicas)
	if err != nil {
		log.Error("reading the switches", "err", err)
		return 1
	}
	switch args[0] {
	case "show":
		fmt.Println(switchLine(sw))
		return 0
	case "off":
		sw.Off = true
	case "on":
		sw.Off = false
	case "pause", "resume":
		if len(args) != 2 || (args[1] != provider.APNs && args[1] != provider.FCM && args[1] != provider.HMS) {
			fmt.Fprintln(os.Stderr, "longlink offline switch pause|resume: want apns, fcm or hms")
			return 2
		}
		var keep []string
		for _, p := range sw.Paused {
			if p != args[1] {
				keep = append(keep, p)
			}
		}
		if args[0] == "pause" {
			keep = append(keep, args[1])
		}
		sw.Paused = keep
	default:
		fmt.Fprintf(os.Stderr, "longlink offline switch: unknown %q\n", args[0])
		return 2
	}
	sw.Reason = reason
	sw.By = os.Getenv("USER")
	if h, err := os.Hostname(); err == nil {
		sw.By += "@" + h
	}
	rev, err := offline.SetSwitches(ctx, js, *f.replicas, sw)
	if err != nil {
		log.Error("setting the switches", "err", err)
		return 1
	}
	log.Warn("audit: offline switches set", "off", sw.Off, "paused", sw.Paused, "by", sw.By, "reason", reason, "revision", rev)
	return 0
}

// switchLine is `offline switch show`'s line: who set the switches, when
// and why, or that nobody ever has (the defaults: on, nothing paused).
func switchLine(sw offline.Switches) string {
	if sw.At.IsZero() {
		return fmt.Sprintf("off=%v paused=%v (never set: the defaults)", sw.Off, sw.Paused)
	}
	return fmt.Sprintf("off=%v paused=%v (by %q at %s: %s)", sw.Off, sw.Paused, sw.By, sw.At.Format(time.RFC3339), sw.Reason)
}
