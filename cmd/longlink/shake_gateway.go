package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/opening"
)

// hubJetStreamDir is set before the push hub starts: with a shake event the
// embedded NATS server also runs JetStream (the durable queue).
var hubJetStreamDir string

// shakeFlags are the gateway's shake options (docs/shake.md, part 2).
type shakeFlags struct {
	dir, keys, sealKeys, state *string
	instance                   *int
	start                      *string
	slotLen                    *time.Duration
	limit, speed, capacity     *float64
	ttl                        *time.Duration
	opener                     *string
	ledger                     *string
	ledgerAdmin                *string
	openPool                   *int
}

func addShakeFlags(fs *flag.FlagSet) shakeFlags {
	return shakeFlags{
		dir:         fs.String("shake-dir", "", "shake event: a split directory (split.json) or a gen output directory; empty disables SHAKE/OPEN"),
		keys:        fs.String("shake-keys", "", "ticket key store (needed by the in-process opener)"),
		sealKeys:    fs.String("shake-seal-keys", "", "seal key store (`longlink shake keys -n 1`; shared by gateways and openers)"),
		state:       fs.String("shake-state", "", "cursor journal directory (default <data>/shake-state[/wN])"),
		instance:    fs.Int("shake-instance", 0, "this gateway's instance number in the split (workers add their index)"),
		start:       fs.String("shake-start", "", "RFC 3339 time of the first slot's start (default: the plan's slot times)"),
		slotLen:     fs.Duration("shake-slot", 0, "slot length with --shake-start"),
		limit:       fs.Float64("shake-limit", 0, "tickets per second this instance may issue (the opening path's capacity; 0: no limit; POST /shake/limit)"),
		speed:       fs.Float64("shake-speed", 1, "pacing factor (POST /shake/speed)"),
		capacity:    fs.Float64("shake-capacity", 0, "shakes per second above which replies ask clients to back off (0: only by hand, POST /shake/degrade)"),
		ttl:         fs.Duration("shake-ttl", time.Hour, "a ticket must be opened within this"),
		opener:      fs.String("shake-opener", "local", "local (verify, claim and enqueue in this process) or remote (opener services: `longlink shake opener`)"),
		ledger:      fs.String("shake-ledger", "", "run the ledger consumer in this process on this bbolt file (default <data>/shake-ledger.db; \"off\" when the ledger runs elsewhere)"),
		ledgerAdmin: fs.String("shake-ledger-admin", "127.0.0.1:7103", "the in-process ledger's HTTP (GET /ledger/stats, /ledger/export); empty disables"),
		openPool:    fs.Int("shake-open-pool", 64, "goroutines running OPEN per process"),
	}
}

func (sf shakeFlags) on() bool { return *sf.dir != "" }

// prepareHub enables JetStream in the embedded NATS server.
func (sf shakeFlags) prepareHub(dataDir string) {
	if sf.on() {
		hubJetStreamDir = filepath.Join(dataDir, "jetstream")
	}
}

// startShakeLedger runs the ledger consumer in the top process (once per
// host, whatever --workers). It returns a stop function.
func startShakeLedger(log *slog.Logger, sf shakeFlags, dataDir, natsURL string) (func(), error) {
	if !sf.on() || *sf.ledger == "off" {
		return func() {}, nil
	}
	if natsURL == "" {
		return nil, errors.New("shake needs NATS with JetStream: leave --push on (embedded) or give --nats")
	}
	path := *sf.ledger
	if path == "" {
		path = filepath.Join(dataDir, "shake-ledger.db")
	}
	l, err := opening.OpenLedger(path, log)
	if err != nil {
		return nil, err
	}
	nc, err := push.Connect(natsURL, "longlink-ledger", log, natsAuth.As(push.RoleLedger))
	if err != nil {
		l.Close()
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		l.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := opening.EnsureStream(ctx, js, 1, 0); err != nil {
		log.Warn("shake: stream not ready yet; the ledger retries", "err", err)
	}
	done := make(chan struct{})
	go func() { _ = l.Run(ctx, js, 256); close(done) }()
	var srv *http.Server
	if *sf.ledgerAdmin != "" {
		ln, err := net.Listen("tcp", *sf.ledgerAdmin)
		if err != nil {
			log.Warn("shake: ledger admin not started", "err", err)
		} else {
			srv = &http.Server{Handler: ledgerMux(l), ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = srv.Serve(ln) }()
		}
	}
	log.Info("shake ledger running", "db", path, "admin", *sf.ledgerAdmin)
	return func() {
		cancel()
		<-done
		if srv != nil {
			_ = srv.Close()
		}
		nc.Close()
		l.Close()
	}, nil
}

// ledgerMux serves GET /ledger/stats and GET /ledger/export[?tag=N] (CSV).
func ledgerMux(l *opening.Ledger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ledger/stats", func(w http.ResponseWriter, r *http.Request) {
		st, err := l.Stats()
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("/ledger/export", func(w http.ResponseWriter, r *http.Request) {
		tag, _ := strconv.ParseUint(r.URL.Query().Get("tag"), 10, 32)
		w.Header().Set("Content-Type", "text/csv")
		_, _ = l.Export(w, uint32(tag))
	})
	return mux
}

// setupShake builds cfg.Shake for one gateway process (worker -1: the only
// process). It returns a cleanup function.
func setupShake(log *slog.Logger, sf shakeFlags, cfg *gateway.Config, dataDir string, worker int) (func(), error) {
	if !sf.on() {
		return func() {}, nil
	}
	if cfg.NATS == "" {
		return nil, errors.New("shake needs NATS with JetStream: leave --push on (embedded) or give --nats")
	}
	if *sf.sealKeys == "" {
		return nil, errors.New("--shake-seal-keys is required with --shake-dir")
	}
	sks, err := shake.LoadKeyStore(*sf.sealKeys)
	if err != nil {
		return nil, err
	}
	seal, err := shake.NewSealKeys(sks)
	if err != nil {
		return nil, err
	}
	inst := *sf.instance + max(worker, 0)
	state := *sf.state
	if state == "" {
		state = filepath.Join(dataDir, "shake-state")
	}
	if worker >= 0 {
		state = filepath.Join(state, fmt.Sprintf("w%d", worker))
	}
	ic := shake.IssuerConfig{Dir: *sf.dir, Instance: inst, StateDir: state, SlotLen: *sf.slotLen,
		Limit: *sf.limit, Speed: *sf.speed, ShakeCapacity: *sf.capacity, Logger: log}
	if *sf.start != "" {
		if ic.Start, err = time.Parse(time.RFC3339, *sf.start); err != nil {
			return nil, fmt.Errorf("--shake-start: %v", err)
		}
	}
	iss, err := shake.NewIssuer(ic, shake.NewSealer(seal, uint16(inst)))
	if err != nil {
		return nil, err
	}
	nc, err := push.Connect(cfg.NATS, "longlink-opener", log, natsAuth.As(push.RoleGateway))
	if err != nil {
		return nil, err
	}
	sc := &gateway.ShakeConfig{Issuer: iss, OpenPool: *sf.openPool}
	switch *sf.opener {
	case "local":
		if *sf.keys == "" {
			nc.Close()
			return nil, errors.New("--shake-keys is required with --shake-opener local")
		}
		ks, err := shake.LoadKeyStore(*sf.keys)
		if err != nil {
			nc.Close()
			return nil, err
		}
		v := shake.NewVerifier(seal, iss.Plan(), ks, *sf.ttl, time.Minute, nil, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		op, err := opening.NewOpener(ctx, opening.OpenerConfig{Verifier: v, Conn: nc, Name: cfg.Node})
		cancel()
		if err != nil {
			nc.Close()
			return nil, err
		}
		sc.Opener, sc.Verifier = op, v
	case "remote":
		sc.Opener = &opening.Remote{NC: nc, Node: cfg.Node}
	default:
		nc.Close()
		return nil, fmt.Errorf("--shake-opener %q: local or remote", *sf.opener)
	}
	if err := iss.Start(); err != nil {
		nc.Close()
		return nil, err
	}
	cfg.Shake = sc
	log.Info("shake event loaded", "dir", *sf.dir, "instance", inst, "opener", *sf.opener, "slots", len(iss.Plan().Slots))
	return func() { iss.Close(); nc.Close() }, nil
}
