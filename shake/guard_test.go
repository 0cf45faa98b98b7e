package shake

import (
	"path/filepath"
	"testing"
	"time"
)

// TestGuardDispenseSealZeroAllocs: docs/shake.md's "dispense + seal, 0
// allocs" with the sealer the gateway runs (OpenSealer, nonce mark on
// disk), including seals that cross into a new reserved block: the
// background reservation is off the per-seal path.
func TestGuardDispenseSealZeroAllocs(t *testing.T) {
	g := generate(t, smallBudget, "guard")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), func(c *IssuerConfig) { c.Speed = 1000 })
	sk, err := RandomSealKeys(1)
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := OpenSealer(sk, 0, filepath.Join(t.TempDir(), "seal-nonce"))
	if err != nil {
		t.Fatal(err)
	}
	is.sealer = sealer
	is.step(clk.t.Add(time.Second), time.Second)
	buf := make([]byte, 0, 128)
	if a := testing.AllocsPerRun(1000, func() {
		var res ShakeResult
		if buf, res, _ = is.Shake(buf[:0], 5); res != ShakeTicket {
			panic(res)
		}
	}); a != 0 {
		t.Errorf("dispense + seal allocates %v times, want 0", a)
	}
	rec := make([]byte, RecordSize)
	if a := testing.AllocsPerRun(1000, func() { buf = sealer.AppendSealed(buf[:0], rec, 9, 9) }); a != 0 {
		t.Errorf("AppendSealed (OpenSealer) allocates %v times, want 0", a)
	}
}
