package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

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
	dir := fs.String("dir", "", "event directory (plan.json)")
	keys := fs.String("keys", "", "ticket key store")
	sealKeys := fs.String("seal-keys", "", "seal key store")
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS with JetStream")
	name := fs.String("name", "", "opener name (default hostname/pid)")
	ttl := fs.Duration("ttl", time.Hour, "a ticket must be opened within this")
	workers := fs.Int("workers", 256, "OPENs handled at once")
	replicas := fs.Int("replicas", opening.DefaultReplicas, "claim stream replicas (the same value as the gateways' --shake-replicas); an existing stream with fewer is refused, never lowered")
	allow := fs.String("whitelist", "", "ticket key ids allowed (comma-separated ranges; empty: all)")
	deny := fs.String("blacklist", "", "ticket key ids refused")
	na := addNATSAuthFlags(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	plan, err := shake.LoadPlan(*dir)
	if err != nil {
		return shakeFail(err)
	}
	ks, err := shake.LoadKeyStore(*keys)
	if err != nil {
		return shakeFail(err)
	}
	sks, err := shake.LoadKeyStore(*sealKeys)
	if err != nil {
		return shakeFail(err)
	}
	seal, err := shake.NewSealKeys(sks)
	if err != nil {
		return shakeFail(err)
	}
	al, err := parseKeyIDs(*allow)
	if err != nil {
		return shakeFail(err)
	}
	dl, err := parseKeyIDs(*deny)
	if err != nil {
		return shakeFail(err)
	}
	if *name == "" {
		h, _ := os.Hostname()
		*name = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	log := newLogger("info", "text", -1)
	if natsAuth, err = na.resolve(*natsURL, auth.DefaultDataDir()); err != nil {
		return shakeFail(err)
	}
	nc, err := push.Connect(*natsURL, "longlink-opener", log, natsAuth.As(push.RoleOpener))
	if err != nil {
		return shakeFail(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	op, err := opening.NewOpener(ctx, opening.OpenerConfig{Verifier: shake.NewVerifier(seal, plan, ks, *ttl, time.Minute, al, dl),
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
	dir := fs.String("dir", "", "event directory (plan.json): claims are re-verified against it")
	keys := fs.String("keys", "", "ticket key store (as the openers')")
	sealKeys := fs.String("seal-keys", "", "seal key store (as the openers')")
	ttl := fs.Duration("ttl", time.Hour, "ticket TTL (as the openers' -ttl)")
	allow := fs.String("whitelist", "", "ticket key ids allowed (as the openers'; empty: all)")
	deny := fs.String("blacklist", "", "ticket key ids refused (as the openers')")
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS with JetStream")
	admin := fs.String("admin", "", "HTTP for GET /ledger/stats and /ledger/export (empty: none); needs Authorization: Bearer <admin token>")
	tokenFile := fs.String("admin-token", "", "admin token file for -admin (default <db dir>/admin.token, created if absent)")
	batch := fs.Int("batch", 256, "messages credited per transaction")
	replicas := fs.Int("replicas", opening.DefaultReplicas, "claim stream and lease bucket replicas (as the gateways' --shake-replicas)")
	leaseTTL := fs.Duration("lease", opening.DefaultLeaseTTL, "ledger lease length (every ledger on the stream must use the same)")
	ackWait := fs.Duration("ack-wait", 30*time.Second, "redeliver a claim not acknowledged within this (after a ledger crash); must exceed a batch's credit time")
	na := addNATSAuthFlags(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	if *dir == "" || *keys == "" || *sealKeys == "" {
		return shakeFail(errors.New("shake ledger re-verifies every claim: -dir, -keys and -seal-keys are required"))
	}
	plan, err := shake.LoadPlan(*dir)
	if err != nil {
		return shakeFail(err)
	}
	al, err := parseKeyIDs(*allow)
	if err != nil {
		return shakeFail(err)
	}
	dl, err := parseKeyIDs(*deny)
	if err != nil {
		return shakeFail(err)
	}
	v, err := claimVerifier(plan, *keys, *sealKeys, *ttl, al, dl)
	if err != nil {
		return shakeFail(err)
	}
	log := newLogger("info", "text", -1)
	l, err := opening.OpenLedger(*db, log)
	if err != nil {
		return shakeFail(err)
	}
	defer l.Close()
	l.SetVerifier(v)
	l.Replicas, l.LeaseTTL, l.AckWait = *replicas, *leaseTTL, *ackWait
	if natsAuth, err = na.resolve(*natsURL, auth.DefaultDataDir()); err != nil {
		return shakeFail(err)
	}
	nc, err := push.Connect(*natsURL, "longlink-ledger", log, natsAuth.As(push.RoleLedger))
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
