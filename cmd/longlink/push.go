package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// pushFlags are the gateway's push options that only the top process (the
// one process, or the supervisor) uses; --nats and --push-window go to
// gateway.Config.
type pushFlags struct {
	on            *bool
	natsListen    *string
	grpc          *string
	grpcTLSCert   *string
	grpcTLSKey    *string
	broadcastRate *float64
	grace         *time.Duration
	auth          *natsAuthFlags
}

func addPushFlags(fs *flag.FlagSet) pushFlags {
	return pushFlags{
		on:            fs.Bool("push", true, "serve the push API (gRPC PushService and NATS subjects) and deliver notifies"),
		natsListen:    fs.String("nats-listen", "127.0.0.1:4222", "client address of the embedded NATS server (used when --nats is empty; port 0 picks one)"),
		grpc:          fs.String("push-grpc", "127.0.0.1:7102", "PushService gRPC address, one per host whatever --workers; callers send a bearer token (<data>/push.token or the admin token); empty disables"),
		grpcTLSCert:   fs.String("push-grpc-tls-cert", "", "certificate for PushService TLS (wanted when --push-grpc is not on loopback)"),
		grpcTLSKey:    fs.String("push-grpc-tls-key", "", "private key for --push-grpc-tls-cert"),
		broadcastRate: fs.Float64("push-broadcast-rate", 10, "broadcasts to everyone allowed per second (per host's router)"),
		grace:         fs.Duration("push-grace", 2*time.Second, "replay recent notifies to a node a user connected to this recently (closes the connect/notify race); negative disables"),
		auth:          addNATSAuthFlags(fs),
	}
}

// natsAuth authenticates this process's NATS connections; every
// push.Connect passes natsAuth.As(role). Set from the flags (resolve) or,
// in a gateway running the embedded server, from its secret.
var natsAuth push.ClientAuth

// natsAuthFlags say how to authenticate to NATS (docs/push.md).
type natsAuthFlags struct {
	creds, user, password, secret, tlsCA, tlsCert, tlsKey *string
	plaintextOK                                           *bool
}

func addNATSAuthFlags(fs *flag.FlagSet) *natsAuthFlags {
	return &natsAuthFlags{
		creds:       fs.String("nats-creds", "", "NATS credentials file (.creds) for an external NATS"),
		user:        fs.String("nats-user", "", "NATS user for an external NATS (with --nats-password, best given as LONGLINK_NATS_PASSWORD)"),
		password:    fs.String("nats-password", "", "password of --nats-user"),
		secret:      fs.String("nats-secret", "", "this host's NATS secret (<data>/nats.secret, made by the gateway): each role's password on the embedded NATS derives from it (default: that file, when NATS is on loopback)"),
		tlsCA:       fs.String("nats-tls-ca", "", "CA certificate(s) that sign the NATS servers' certificates (turns TLS on)"),
		tlsCert:     fs.String("nats-tls-cert", "", "client certificate for NATS mutual TLS"),
		tlsKey:      fs.String("nats-tls-key", "", "private key for --nats-tls-cert"),
		plaintextOK: fs.Bool("nats-plaintext-ok", false, "allow NATS off loopback without TLS (a private network you trust)"),
	}
}

// resolve builds the ClientAuth for urls. Without explicit credentials a
// loopback NATS gets the role passwords from <dataDir>/nats.secret when it
// exists; derived passwords are never sent off the host.
func (f *natsAuthFlags) resolve(urls, dataDir string) (push.ClientAuth, error) {
	a := push.ClientAuth{CredsFile: *f.creds, User: *f.user, Password: *f.password,
		TLSCA: *f.tlsCA, TLSCert: *f.tlsCert, TLSKey: *f.tlsKey, PlaintextOK: *f.plaintextOK}
	if (*f.tlsCert == "") != (*f.tlsKey == "") {
		return a, errors.New("--nats-tls-cert and --nats-tls-key go together")
	}
	if a.CredsFile != "" && a.User != "" {
		return a, errors.New("--nats-creds and --nats-user: give one")
	}
	if a.CredsFile != "" || a.User != "" {
		return a, nil
	}
	path := *f.secret
	if path == "" {
		if !allLoopback(urls) || dataDir == "" {
			return a, nil // derived passwords never leave the host
		}
		path = filepath.Join(dataDir, push.SecretFile)
	}
	if _, err := os.Stat(path); err == nil {
		if _, err := push.LoadSecret(path); err != nil { // a bad one is an error now, not a silent refusal later
			return a, err
		}
	}
	a.SecretFile = path // read at each connection attempt: the gateway may create it after we start
	return a, nil
}

func allLoopback(urls string) bool {
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if i := strings.Index(u, "://"); i >= 0 {
			u = u[i+3:]
		}
		if i := strings.LastIndex(u, "@"); i >= 0 {
			u = u[i+1:]
		}
		h, _, err := net.SplitHostPort(u)
		if err != nil {
			h = u
		}
		ip := net.ParseIP(h)
		if !(h == "localhost" || ip != nil && ip.IsLoopback()) {
			return false
		}
	}
	return true
}

// startPushHub starts the embedded NATS server (unless nats names an external
// cluster), the router and the gRPC PushService. With the embedded server it
// creates <data>/nats.secret, and <data>/push.token for PushService callers
// (the admin token is accepted too).
func startPushHub(log *slog.Logger, pf pushFlags, nats, dataDir, adminToken string) (*push.Hub, error) {
	cfg := push.HubConfig{
		NATS: nats, NATSListen: *pf.natsListen, GRPCListen: *pf.grpc,
		GRPCTLSCert: *pf.grpcTLSCert, GRPCTLSKey: *pf.grpcTLSKey,
		BroadcastRate: *pf.broadcastRate, Grace: *pf.grace, Logger: log,
		JetStreamDir: hubJetStreamDir, PlaintextOK: *pf.auth.plaintextOK,
		JetStreamProbe: hubJetStreamDir != "", // shake is on: readiness asks JetStream too
	}
	if nats == "" {
		if *pf.auth.creds != "" || *pf.auth.user != "" {
			return nil, errors.New("--nats-creds and --nats-user are for an external NATS (--nats); the embedded server's passwords derive from <data>/nats.secret")
		}
		p := filepath.Join(dataDir, push.SecretFile)
		s, created, err := push.LoadOrCreateSecret(p)
		if err != nil {
			return nil, err
		}
		if created {
			log.Info("created the NATS secret (every role's NATS password derives from it)", "file", p)
		}
		cfg.Secret = s
	} else {
		a, err := pf.auth.resolve(nats, dataDir)
		if err != nil {
			return nil, err
		}
		cfg.NATSAuth = a
	}
	if *pf.grpc != "" {
		p := filepath.Join(dataDir, push.PushTokenFile)
		tok, created, err := push.LoadOrCreateToken(p, true)
		if err != nil {
			return nil, err
		}
		if created {
			log.Info("created the PushService token (`longlink push` and logic's --push-token-file read it)", "file", p)
		}
		cfg.PushTokens = []string{tok, adminToken}
	}
	h, err := push.StartHub(cfg)
	if err != nil {
		return nil, err
	}
	if nats == "" {
		natsAuth = push.ClientAuth{Secret: h.Secret()}
	} else {
		natsAuth = cfg.NATSAuth
	}
	where := "external"
	if nats == "" {
		where = "embedded"
	}
	log.Info("push hub started", "nats", push.RedactURLs(h.NATSURL()), "nats_server", where, "grpc", h.GRPCAddr())
	if err := h.Ready(); err != nil {
		log.Warn("push hub not ready yet (push is advisory: the gateway runs; it retries)", "reason", err)
	}
	return h, nil
}

const pushSummary = "send a notify through a gateway host's PushService (uses <data>/push.token)"

func init() { register(command{name: "push", summary: pushSummary, run: runPush}) }

// runPush is `longlink push [flags] notify|multicast|broadcast`.
func runPush(args []string) int {
	fs := newFlagSet("push", pushSummary+"\n\n  longlink push --uid 42 --type 1 --version 7 notify\n  longlink push --uids 1,2,3 --type 1 --version 7 multicast\n  longlink push --type 9 --version 1 broadcast\n  longlink push nats-password admin   (a role's password on this host's embedded NATS, user = role)")
	addr := fs.String("addr", "127.0.0.1:7102", "PushService address")
	dataDir := fs.String("data", auth.DefaultDataDir(), "data directory holding push.token")
	tokenFile := fs.String("token-file", "", "bearer token file (default <data>/push.token)")
	tlsCA := fs.String("tls-ca", "", "CA of the PushService certificate (turns TLS on)")
	uid := fs.Uint64("uid", 0, "user (notify)")
	uids := fs.String("uids", "", "users, comma-separated (multicast)")
	device := fs.String("device", "", "only this device of --uid (notify)")
	typ := fs.Uint("type", 0, "data type (0: sync everything)")
	ver := fs.Uint64("version", 0, "version reached")
	payload := fs.String("payload", "", "inline payload (at most 1 KiB)")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of the call")
	if !parseFlags(fs, args) {
		return 2
	}
	if fs.NArg() == 2 && fs.Arg(0) == "nats-password" { // for the nats CLI and services configured by hand
		p := filepath.Join(*dataDir, push.SecretFile)
		sec, err := push.LoadSecret(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "longlink push:", err)
			return 1
		}
		r := push.Role(fs.Arg(1))
		if _, err := push.Permissions(r); err != nil {
			fmt.Fprintf(os.Stderr, "longlink push: %v (roles: %v)\n", err, push.Roles)
			return 2
		}
		fmt.Println(sec.Password(r))
		return 0
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	if *tokenFile == "" {
		*tokenFile = filepath.Join(*dataDir, push.PushTokenFile)
	}
	tok, _, err := push.LoadOrCreateToken(*tokenFile, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink push:", err)
		return 1
	}
	tc := insecure.NewCredentials()
	if *tlsCA != "" {
		pem, err := os.ReadFile(*tlsCA)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintf(os.Stderr, "longlink push: --tls-ca %s: no PEM certificate (%v)\n", *tlsCA, err)
			return 1
		}
		tc = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	cc, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(tc), grpc.WithPerRPCCredentials(push.BearerToken(tok)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink push:", err)
		return 1
	}
	defer cc.Close()
	api := pb.NewPushServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var rep *pb.PushReply
	switch fs.Arg(0) {
	case "notify":
		rep, err = api.Notify(ctx, &pb.NotifyRequest{Uid: *uid, Device: *device, Type: uint32(*typ), Version: *ver, Payload: []byte(*payload)})
	case "multicast":
		var list []uint64
		for _, s := range strings.Split(*uids, ",") {
			n, perr := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
			if perr != nil {
				fmt.Fprintf(os.Stderr, "longlink push: --uids %q: %v\n", *uids, perr)
				return 2
			}
			list = append(list, n)
		}
		rep, err = api.Multicast(ctx, &pb.MulticastRequest{Uids: list, Type: uint32(*typ), Version: *ver, Payload: []byte(*payload)})
	case "broadcast":
		rep, err = api.Broadcast(ctx, &pb.BroadcastRequest{Type: uint32(*typ), Version: *ver, Payload: []byte(*payload)})
	default:
		fmt.Fprintf(os.Stderr, "longlink push: unknown call %q (notify, multicast or broadcast)\n", fs.Arg(0))
		return 2
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "longlink push: %s: %v\n", *addr, err)
		return 1
	}
	b, _ := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(proto.Message(rep))
	fmt.Println(string(b))
	return 0
}
