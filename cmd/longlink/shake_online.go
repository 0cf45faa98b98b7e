package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/opening"
)

// shakeOpener runs a standalone opener service (scaled out: gateways use
// --shake-opener remote).
func shakeOpener(args []string) int {
	fs := newFlagSet("shake opener", "run an opener service: verify OPENs, claim and enqueue them on JetStream")
	sf := addServiceFlags(fs, "")
	name := fs.String("name", "", "opener name (default hostname/pid)")
	workers := fs.Int("workers", 256, "OPENs handled at once")
	replicas := fs.Int("replicas", opening.DefaultReplicas, "claim stream replicas (the same value as the gateways' --shake-replicas); an existing stream with fewer is refused, never lowered")
	v, rc := sf.parse(fs, args)
	if v == nil {
		return rc
	}
	if *name == "" {
		h, _ := os.Hostname()
		*name = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	log := newLogger("info", "text", -1)
	nc, err := sf.dial("longlink-opener", log, push.RoleOpener)
	if err != nil {
		return shakeFail(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	op, err := opening.NewOpener(ctx, opening.OpenerConfig{Verifier: v,
		Conn: nc, Name: *name, Replicas: *replicas, Log: log})
	cancel()
	if err != nil {
		return shakeFail(err)
	}
	if _, err := opening.Serve(nc, op, *workers); err != nil {
		return shakeFail(err)
	}
	log.Info("opener service running", "subject", opening.ServiceSubj, "name", *name)
	waitSignal()
	_ = nc.Drain()
	return 0
}

// shakeLedger runs the ledger consumer as its own process.
func shakeLedger(args []string) int {
	fs := newFlagSet("shake ledger", "credit proven claims from JetStream into a bbolt ledger, exactly once; one ledger credits at a time (a lease)")
	db := fs.String("db", "shake-ledger.db", "ledger file")
	sf := addServiceFlags(fs, " (as the openers')")
	admin := fs.String("admin", "", "HTTP for GET /ledger/stats and /ledger/export (empty: none); needs Authorization: Bearer <admin token>")
	tokenFile := fs.String("admin-token", "", "admin token file for -admin (default <db dir>/admin.token, created if absent)")
	batch := fs.Int("batch", 256, "messages credited per transaction")
	replicas := fs.Int("replicas", opening.DefaultReplicas, "claim stream and lease bucket replicas (as the gateways' --shake-replicas)")
	leaseTTL := fs.Duration("lease", opening.DefaultLeaseTTL, "ledger lease length (every ledger on the stream must use the same)")
	ackWait := fs.Duration("ack-wait", 30*time.Second, "redeliver a claim not acknowledged within this (after a ledger crash); must exceed a batch's credit time")
	v, rc := sf.parse(fs, args)
	if v == nil {
		return rc
	}
	log := newLogger("info", "text", -1)
	l, err := opening.OpenLedger(*db, log)
	if err != nil {
		return shakeFail(err)
	}
	defer l.Close()
	l.SetVerifier(v)
	l.Replicas, l.LeaseTTL, l.AckWait = *replicas, *leaseTTL, *ackWait
	nc, err := sf.dial("longlink-ledger", log, push.RoleLedger)
	if err != nil {
		return shakeFail(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return shakeFail(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err = opening.EnsureStream(sctx, js, *replicas, 0, log)
	scancel()
	if err != nil {
		return shakeFail(err)
	}
	if *admin != "" {
		if *tokenFile == "" {
			*tokenFile = filepath.Join(filepath.Dir(*db), "admin.token")
		}
		tok, _, err := gateway.LoadOrCreateAdminToken(*tokenFile)
		if err != nil {
			return shakeFail(err)
		}
		ln, err := net.Listen("tcp", *admin)
		if err != nil {
			return shakeFail(err)
		}
		srv := &http.Server{Handler: ledgerMux(l, tok), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { waitSignal(); cancel() }()
	log.Info("ledger running", "db", *db)
	if err := l.Run(ctx, js, *batch); err != nil && ctx.Err() == nil {
		return shakeFail(err)
	}
	return 0
}

// shakeLedgerExport writes a (stopped) ledger's CSV export.
func shakeLedgerExport(args []string) int {
	fs := newFlagSet("shake ledger-export", "write the ledger CSV that `shake reconcile` reads (the ledger must not be running; else GET /ledger/export)")
	db := fs.String("db", "shake-ledger.db", "ledger file")
	out := fs.String("out", "-", "output file (- for stdout)")
	tag := fs.Uint("tag", 0, "only this plan tag (0: all)")
	if !parseFlags(fs, args) {
		return 2
	}
	l, err := opening.OpenLedger(*db, nil)
	if err != nil {
		return shakeFail(err)
	}
	defer l.Close()
	w := os.Stdout
	if *out != "-" {
		if w, err = os.Create(*out); err != nil {
			return shakeFail(err)
		}
		defer w.Close()
	}
	n, err := l.Export(w, uint32(*tag))
	if err != nil {
		return shakeFail(err)
	}
	fmt.Fprintf(os.Stderr, "%d credited packets exported\n", n)
	return 0
}

func waitSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

// serviceFlags are the opener's and the ledger's common flags: what claims
// are verified against (the opener checks each OPEN, the ledger re-verifies
// each claim, with the same values) and their NATS.
type serviceFlags struct {
	dir, keys, sealKeys, allow, deny *string
	ttl                              *time.Duration
	nats                             *string
	natsAuth                         *natsAuthFlags
}

// addServiceFlags adds the flags; as ends each claim flag's help text.
func addServiceFlags(fs *flag.FlagSet, as string) *serviceFlags {
	return &serviceFlags{
		dir:      fs.String("dir", "", "event directory (plan.json)"+as),
		keys:     fs.String("keys", "", "ticket key store"+as),
		sealKeys: fs.String("seal-keys", "", "seal key store"+as),
		ttl:      fs.Duration("ttl", time.Hour, "a ticket must be opened within this"+as),
		allow:    fs.String("whitelist", "", "ticket key ids allowed (comma-separated; empty: all)"+as),
		deny:     fs.String("blacklist", "", "ticket key ids refused"+as),
		nats:     fs.String("nats", "nats://127.0.0.1:4222", "NATS with JetStream"),
		natsAuth: addNATSAuthFlags(fs),
	}
}

// parse parses args and loads the claim verifier. On failure v is nil and
// rc the exit status: 2 for bad flags, 1 for an event that does not load
// (the error printed).
func (f *serviceFlags) parse(fs *flag.FlagSet, args []string) (v *shake.Verifier, rc int) {
	if !parseFlags(fs, args) {
		return nil, 2
	}
	v, err := f.verifier()
	if err != nil {
		return nil, shakeFail(err)
	}
	return v, 0
}

func (f *serviceFlags) verifier() (*shake.Verifier, error) {
	if *f.dir == "" || *f.keys == "" || *f.sealKeys == "" {
		return nil, errors.New("-dir, -keys and -seal-keys are required: every claim is verified against them")
	}
	plan, err := shake.LoadPlan(*f.dir)
	if err != nil {
		return nil, err
	}
	allow, err := parseKeyIDs(*f.allow)
	if err != nil {
		return nil, err
	}
	deny, err := parseKeyIDs(*f.deny)
	if err != nil {
		return nil, err
	}
	return claimVerifier(plan, *f.keys, *f.sealKeys, *f.ttl, allow, deny)
}

// dial resolves this process's NATS credentials (natsAuth, kept for its
// later connections) and connects to -nats as role.
func (f *serviceFlags) dial(name string, log *slog.Logger, role push.Role) (*nats.Conn, error) {
	var err error
	if natsAuth, err = f.natsAuth.resolve(*f.nats, auth.DefaultDataDir()); err != nil {
		return nil, err
	}
	return push.Connect(*f.nats, name, log, natsAuth.As(role))
}
