// Package live starts a shake event that is being served, for tests of the
// packages above shake (gateway, client, loadtest): the generated test
// event, JetStream, an issuer serving slot 1 from now, a verifier and an
// in-process opener. Everything stops with the test.
package live

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/opening"
	"github.com/longlink/longlink/shake/shaketest"
)

// Event is a served test event.
type Event struct {
	*shaketest.Event
	Issuer   *shake.Issuer
	Verifier *shake.Verifier
	Opener   *opening.Opener
	NC       *nats.Conn // the opener's connection (push.RoleGateway)
	LedgerNC *nats.Conn // for a ledger (push.RoleLedger)
	Secret   push.Secret
	URL      string
}

// Serve starts it; speed is the issuer's pacing factor (6,000 tickets over
// 600 s / speed), name the opener's.
func Serve(t testing.TB, speed float64, name string) *Event {
	t.Helper()
	root := t.TempDir()
	ev := shaketest.Generate(t, root)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// An authenticated server, as the gateway runs it: the opener connects
	// with the gateway role's credentials.
	secret, _, err := push.LoadOrCreateSecret(filepath.Join(root, push.SecretFile))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", JetStreamDir: filepath.Join(root, "js"), Secret: secret, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	iss, err := shake.NewIssuer(shake.IssuerConfig{Dir: ev.Dir, StateDir: filepath.Join(root, "state"),
		Start: time.Now().Add(-time.Second), SlotLen: 10 * time.Minute, Speed: speed, Logger: quiet}, shake.NewSealer(ev.SealKeys, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.Close)
	nc, err := push.Connect(ns.ClientURL(), "live-opener", quiet, push.ClientAuth{Secret: secret}.As(push.RoleGateway))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	v := shake.NewVerifier(ev.SealKeys, ev.Plan, ev.Keys, time.Hour, time.Minute, nil, nil)
	op, err := opening.NewOpener(context.Background(), opening.OpenerConfig{Verifier: v, Conn: nc, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	lnc, err := push.Connect(ns.ClientURL(), "live-ledger", quiet, push.ClientAuth{Secret: secret}.As(push.RoleLedger))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lnc.Close)
	return &Event{Event: ev, Issuer: iss, Verifier: v, Opener: op, NC: nc, LedgerNC: lnc, Secret: secret, URL: ns.ClientURL()}
}
