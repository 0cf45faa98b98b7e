package loadtest

import (
	"testing"
	"time"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/shake/shaketest/live"
)

// shakeEvent serves the test event (shaketest/live: 6,000 tickets over
// 600 s / speed) with an in-process opener.
func shakeEvent(t *testing.T, speed float64) *gateway.ShakeConfig {
	t.Helper()
	e := live.Serve(t, speed, "loadtest")
	return &gateway.ShakeConfig{Issuer: e.Issuer, Opener: e.Opener, Verifier: e.Verifier}
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
