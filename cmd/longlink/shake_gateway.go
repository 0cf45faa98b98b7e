package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
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
	replicas                   *int
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
		ledger:      fs.String("shake-ledger", "", "run the ledger consumer in this process on this bbolt file (default: <data>/shake-ledger.db with the embedded NATS, off with --nats; \"off\" when the ledger runs elsewhere); needs --shake-keys and --shake-seal-keys to re-verify claims"),
		ledgerAdmin: fs.String("shake-ledger-admin", "127.0.0.1:7103", "the in-process ledger's HTTP (GET /ledger/stats, /ledger/export; Authorization: Bearer <admin token>); empty disables"),
		openPool:    fs.Int("shake-open-pool", 64, "goroutines running OPEN per process"),
		replicas:    fs.Int("shake-replicas", opening.DefaultReplicas, "claim stream and ledger lease replicas (the same value as `shake opener -replicas` and `shake ledger -replicas`); an existing stream with fewer is refused, never lowered"),
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
// host, whatever --workers). With an external NATS (--nats) it is off
// unless --shake-ledger names a file: many hosts share that NATS, and one
// ledger is enough (the lease would keep the others idle anyway). It
// returns a stop function.
func startShakeLedger(log *slog.Logger, sf shakeFlags, dataDir, natsURL string, externalNATS bool, adminToken string) (func(), error) {
	if !sf.on() || *sf.ledger == "off" {
		return func() {}, nil
	}
	if *sf.ledger == "" && externalNATS {
		log.Info("shake ledger off: NATS is external (--nats); run `longlink shake ledger` once, or give --shake-ledger FILE")
		return func() {}, nil
	}
	if natsURL == "" {
		return nil, errors.New("shake needs NATS with JetStream: leave --push on (embedded) or give --nats")
	}
	if *sf.keys == "" || *sf.sealKeys == "" {
		return nil, errors.New("the shake ledger re-verifies every claim: it needs --shake-keys and --shake-seal-keys (or --shake-ledger off)")
	}
	plan, err := shake.LoadPlan(*sf.dir)
	if err != nil {
		return nil, err
	}
	v, err := claimVerifier(plan, *sf.keys, *sf.sealKeys, *sf.ttl, nil, nil)
	if err != nil {
		return nil, err
	}
	path := *sf.ledger
	if path == "" {
		path = filepath.Join(dataDir, "shake-ledger.db")
	}
	l, err := opening.OpenLedger(path, log)
	if err != nil {
		return nil, err
	}
	l.SetVerifier(v)
	l.Replicas = *sf.replicas
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
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = opening.EnsureStream(sctx, js, *sf.replicas, 0, log)
	scancel()
	if errors.Is(err, opening.ErrStreamWeaker) {
		cancel()
		nc.Close()
		l.Close()
		return nil, err
	} else if err != nil {
		log.Warn("shake: stream not ready yet; the ledger retries", "err", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := l.Run(ctx, js, 256); err != nil && ctx.Err() == nil {
			log.Error("shake ledger stopped", "err", err)
		}
	}()
	var srv *http.Server
	if *sf.ledgerAdmin != "" {
		ln, err := net.Listen("tcp", *sf.ledgerAdmin)
		if err != nil {
			log.Warn("shake: ledger admin not started", "err", err)
		} else {
			srv = &http.Server{Handler: ledgerMux(l, adminToken), ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = srv.Serve(ln) }()
		}
	}
	log.Info("shake ledger running", "db", path, "admin", *sf.ledgerAdmin)
	ledgerLinks = append(ledgerLinks, gateway.LinkCheck{Name: "shake ledger", Addr: path, Check: func() error { return ledgerState(nc, done) }})
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

// claimVerifier is what the ledger re-verifies claims with: the same
// inputs as an opener's verifier (plan, ticket keys, seal keys, ticket TTL,
// key whitelist and blacklist).
func claimVerifier(plan *shake.Plan, keysDir, sealDir string, ttl time.Duration, allow, deny []uint16) (*shake.Verifier, error) {
	ks, err := shake.LoadKeyStore(keysDir)
	if err != nil {
		return nil, err
	}
	seal, err := loadSealKeys(sealDir)
	if err != nil {
		return nil, err
	}
	return shake.NewVerifier(seal, plan, ks, ttl, time.Minute, allow, deny), nil
}

// ledgerMux serves GET /ledger/stats and GET /ledger/export[?tag=N] (CSV),
// both only with "Authorization: Bearer <token>" (the export lists every
// winner); anything else gets a bare 401.
func ledgerMux(l *opening.Ledger, token string) http.Handler {
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
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !bearerOK(r, token) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// bearerOK reports whether r carries "Authorization: Bearer <want>"; an
// empty want matches nothing.
func bearerOK(r *http.Request, want string) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && want != "" && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(want)) == 1
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
	sealer, err := shake.OpenSealer(seal, uint16(inst), filepath.Join(state, "seal-nonce"))
	if err != nil {
		return nil, err
	}
	iss, err := shake.NewIssuer(ic, sealer)
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
		op, err := opening.NewOpener(ctx, opening.OpenerConfig{Verifier: v, Conn: nc, Name: cfg.Node, Replicas: *sf.replicas, Log: log})
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

// ledgerLinks show the shake ledger (when this process runs it) on /status.
var ledgerLinks []gateway.LinkCheck

// ledgerState is nil while the ledger runs with its NATS link up.
func ledgerState(nc *nats.Conn, done <-chan struct{}) error {
	select {
	case <-done:
		return errors.New("stopped (see the log)")
	default:
	}
	if !nc.IsConnected() {
		return fmt.Errorf("nats %s", strings.ToLower(nc.Status().String()))
	}
	return nil
}
