package client

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/opening"
	"github.com/longlink/longlink/shake/shaketest"
)

// The SDK's Shake and Open against a real gateway serving an event.
func TestShakeAndOpen(t *testing.T) {
	root := t.TempDir()
	ev := shaketest.Generate(t, root)
	ns := shaketest.JetStream(t, "127.0.0.1:0", filepath.Join(root, "js"))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	iss, err := shake.NewIssuer(shake.IssuerConfig{Dir: ev.Dir, StateDir: filepath.Join(root, "state"),
		Start: time.Now().Add(-time.Second), SlotLen: 10 * time.Minute, Speed: 50, Logger: quiet}, shake.NewSealer(ev.SealKeys, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Start(); err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	v := shake.NewVerifier(ev.SealKeys, ev.Plan, ev.Keys, time.Hour, time.Minute, nil, nil)
	op, err := opening.NewOpener(context.Background(), opening.OpenerConfig{Verifier: v, Conn: nc, Name: "sdk-test"})
	if err != nil {
		t.Fatal(err)
	}
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) {
		c.Shake = &gateway.ShakeConfig{Issuer: iss, Opener: op, Verifier: v}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(77, time.Hour), Device: "d"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for {
		r, err := c.Shake(ctx)
		if err != nil {
			t.Fatalf("shake: %v", err)
		}
		if r.Result != 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		o, err := c.Open(ctx, r.Ticket)
		if err != nil || o.Code != 0 || o.AmountFen == 0 {
			t.Fatalf("open: %v %v", o, err)
		}
		return
	}
}
