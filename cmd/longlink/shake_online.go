package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/auth"
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
	replicas := fs.Int("replicas", 1, "stream replicas when creating it")
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
		Conn: nc, Name: *name, Replicas: *replicas})
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
	fs := newFlagSet("shake ledger", "credit opened packets from JetStream into a bbolt ledger, exactly once")
	db := fs.String("db", "shake-ledger.db", "ledger file")
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS with JetStream")
	admin := fs.String("admin", "", "HTTP for GET /ledger/stats and /ledger/export (empty: none)")
	batch := fs.Int("batch", 256, "messages credited per transaction")
	na := addNATSAuthFlags(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	log := newLogger("info", "text", -1)
	l, err := opening.OpenLedger(*db, log)
	if err != nil {
		return shakeFail(err)
	}
	defer l.Close()
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
	if *admin != "" {
		ln, err := net.Listen("tcp", *admin)
		if err != nil {
			return shakeFail(err)
		}
		go func() { _ = http.Serve(ln, ledgerMux(l)) }()
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { waitSignal(); cancel() }()
	log.Info("ledger running", "db", *db)
	_ = l.Run(ctx, js, *batch)
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
