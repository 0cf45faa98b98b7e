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
	NC       *nats.Conn
}

// Serve starts it; speed is the issuer's pacing factor (6,000 tickets over
// 600 s / speed), name the opener's.
func Serve(t testing.TB, speed float64, name string) *Event {
	t.Helper()
	root := t.TempDir()
	ev := shaketest.Generate(t, root)
	ns := shaketest.JetStream(t, "127.0.0.1:0", filepath.Join(root, "js"))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	iss, err := shake.NewIssuer(shake.IssuerConfig{Dir: ev.Dir, StateDir: filepath.Join(root, "state"),
		Start: time.Now().Add(-time.Second), SlotLen: 10 * time.Minute, Speed: speed, Logger: quiet}, shake.NewSealer(ev.SealKeys, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.Close)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	v := shake.NewVerifier(ev.SealKeys, ev.Plan, ev.Keys, time.Hour, time.Minute, nil, nil)
	op, err := opening.NewOpener(context.Background(), opening.OpenerConfig{Verifier: v, Conn: nc, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return &Event{Event: ev, Issuer: iss, Verifier: v, Opener: op, NC: nc}
}
