package loadtest

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

// shakeEvent generates the shaketest event, starts JetStream, an issuer
// serving slot 1 now (speed: 6,000 tickets over 600 s / speed) and an
// in-process opener.
func shakeEvent(t *testing.T, speed float64) *gateway.ShakeConfig {
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
	op, err := opening.NewOpener(context.Background(), opening.OpenerConfig{Verifier: v, Conn: nc, Name: "loadtest"})
	if err != nil {
		t.Fatal(err)
	}
	return &gateway.ShakeConfig{Issuer: iss, Opener: op, Verifier: v}
}

func TestGatewayShakeAndOpen(t *testing.T) {
	addr, admin, keys := testGatewayWith(t, shakeEvent(t, 60)) // ~600 tickets/s
	cfg := small(200, 3*time.Second, "shake", "open")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.ShakeRate = 1000
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" || r.ConnsEstablished != 200 {
		t.Fatalf("held %d, failure %q, errors %v", r.ConnsEstablished, r.Failure, r.Errors)
	}
	if r.ShakeSent == 0 || r.ShakePerS <= 0 || r.ShakeP99 <= 0 || r.Counters["shake_ok"] == 0 {
		t.Fatalf("shakes: sent %d, %.0f/s p99 %.2f", r.ShakeSent, r.ShakePerS, r.ShakeP99)
	}
	if r.ShakeTickets == 0 || r.ShakeTickets+r.ShakeNoPacket+r.ShakeNoSlot != r.Counters["shake_ok"] {
		t.Errorf("tickets %d + none %d + no slot %d != replies %d", r.ShakeTickets, r.ShakeNoPacket, r.ShakeNoSlot, r.Counters["shake_ok"])
	}
	if r.OpenOK == 0 || r.OpenPerS <= 0 || r.OpenP99 <= 0 || r.OpenErrors != 0 || r.Counters["open_fen"] <= 0 {
		t.Errorf("opens: %d ok (%.0f/s p99 %.2f), %d errors %v", r.OpenOK, r.OpenPerS, r.OpenP99, r.OpenErrors, r.Errors)
	}
	if r.OpenOK > r.ShakeTickets || r.Counters["open_again"] != 0 {
		t.Errorf("opened %d (again %d) of %d tickets", r.OpenOK, r.Counters["open_again"], r.ShakeTickets)
	}
	if r.GatewayCPUPerShake != 0 {
		t.Errorf("CPU per shake given with open running: %.1f", r.GatewayCPUPerShake)
	}
}

func TestShakeAgainstFloorGivesRatio(t *testing.T) {
	addr, admin, keys := testGatewayWith(t, shakeEvent(t, 1))
	cfg := small(200, 2500*time.Millisecond, "shake")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.CompareFloor = true
	cfg.ShakeRate = 800
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" || r.Floor == nil {
		t.Fatalf("failure %q", r.Failure)
	}
	if r.Floor.Counters["shake_ok"] == 0 || r.Floor.ShakeP99 <= 0 || r.Counters["shake_ok"] == 0 {
		t.Errorf("floor shakes %d (p99 %.2f), gateway %d", r.Floor.Counters["shake_ok"], r.Floor.ShakeP99, r.Counters["shake_ok"])
	}
	if r.GatewayCPUPerShake <= 0 || r.Floor.GatewayCPUPerShake <= 0 || r.RatioCPUPerShake == nil {
		t.Errorf("CPU per shake: gateway %.1f floor %.1f ratio %v", r.GatewayCPUPerShake, r.Floor.GatewayCPUPerShake, r.RatioCPUPerShake)
	}
}
