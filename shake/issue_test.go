package shake

import (
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeClock drives an Issuer by hand: no goroutine, no sleeping.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestIssuer(t testing.TB, dir string, inst int, start time.Time, clk *fakeClock, state string, mod func(*IssuerConfig)) *Issuer {
	t.Helper()
	sk, err := RandomSealKeys(1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := IssuerConfig{Dir: dir, Instance: inst, StateDir: state, Start: start, SlotLen: 10 * time.Second, Clock: clk.now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	is, err := NewIssuer(cfg, NewSealer(sk, uint16(inst)))
	if err != nil {
		t.Fatal(err)
	}
	is.nowSec.Store(uint32(clk.t.Unix()))
	if err := is.advance(clk.t); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if st := is.cur.Swap(nil); st != nil {
			st.close()
		}
	})
	return is
}

// drive advances the clock by dt in ticks, shaking `per` times per tick;
// it returns the sealed tickets handed out.
func drive(is *Issuer, clk *fakeClock, dt time.Duration, per int) [][]byte {
	var out [][]byte
	for end := clk.t.Add(dt); clk.t.Before(end); {
		clk.t = clk.t.Add(is.cfg.Tick)
		is.step(clk.t, is.cfg.Tick)
		for i := 0; i < per; i++ {
			b, res, _ := is.Shake(nil, 1)
			if res == ShakeTicket {
				out = append(out, b)
			}
		}
	}
	return out
}

func recordsOf(t testing.TB, is *Issuer, sealed [][]byte) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	scratch := make([]byte, SealedSize)
	for _, b := range sealed {
		u, err := is.sealer.keys().Unseal(b, scratch)
		if err != nil {
			t.Fatal(err)
		}
		k := string(u.Record[:])
		if seen[k] {
			t.Fatal("a record was handed out twice")
		}
		seen[k] = true
	}
	return seen
}

func TestIssuerPacingSpreadsTheSlot(t *testing.T) {
	g := generate(t, smallBudget, "pace")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), nil)
	total := g.plan.Slots[0].Packets
	// Shaking far faster than the pacing: after each second about a tenth
	// of the slot is out, and by the end all of it.
	var got [][]byte
	for s := 1; s <= 10; s++ {
		got = append(got, drive(is, clk, time.Second, 50)...)
		want := float64(total) * float64(s) / 10
		if math.Abs(float64(len(got))-want) > 0.02*float64(total) {
			t.Fatalf("after %ds: %d issued, want about %.0f", s, len(got), want)
		}
	}
	if uint64(len(got)) < total*99/100 {
		t.Fatalf("slot ended with %d of %d issued", len(got), total)
	}
	recordsOf(t, is, got)
	// The next slot starts by itself.
	drive(is, clk, 100*time.Millisecond, 1)
	if st := is.Status(); st.Slot != int64(g.plan.Slots[1].ID) {
		t.Fatalf("slot %d after the boundary", st.Slot)
	}
}

func TestIssuerQuietPeriodCaughtUpAndSpeed(t *testing.T) {
	g := generate(t, smallBudget, "quiet")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), nil)
	total := float64(g.plan.Slots[0].Packets)
	drive(is, clk, 5*time.Second, 0) // nobody shakes for half the slot
	got := drive(is, clk, 5*time.Second, 100)
	if float64(len(got)) < 0.98*total {
		t.Fatalf("after a quiet half: %d of %.0f issued in the second half", len(got), total)
	}
	// Speed 2 on the next slot: done in about half of it.
	if err := is.SetSpeed(2); err != nil {
		t.Fatal(err)
	}
	drive(is, clk, 10*time.Millisecond, 0)
	total = float64(g.plan.Slots[1].Packets)
	got = drive(is, clk, 5*time.Second, 200)
	if float64(len(got)) < 0.7*total {
		t.Fatalf("speed 2: %d of %.0f issued in half the slot", len(got), total)
	}
	if is.SetSpeed(0) == nil || is.SetSpeed(math.NaN()) == nil {
		t.Fatal("bad speeds accepted")
	}
}

func TestIssuerPerSecondLimit(t *testing.T) {
	g := generate(t, smallBudget, "limit")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), func(c *IssuerConfig) { c.Limit = 500 })
	for s := 0; s < 3; s++ {
		n := len(drive(is, clk, time.Second, 100))
		if n < 480 || n > 520 {
			t.Fatalf("second %d: %d issued, limit 500/s", s, n)
		}
	}
	_ = is.SetLimit(2000)
	if n := len(drive(is, clk, time.Second, 100)); n < 1900 || n > 2100 {
		t.Fatalf("after raising the limit: %d issued, want about 2000", n)
	}
}

func TestIssuerResumeNeverRepeats(t *testing.T) {
	g := generate(t, smallBudget, "resume")
	t0 := time.Unix(1_700_000_000, 0)
	state := t.TempDir()
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, state, nil)
	first := drive(is, clk, 2*time.Second, 50)
	// "kill -9": the first issuer just stops; a new one reads the journal.
	is2 := newTestIssuer(t, g.dir, 0, t0, clk, state, nil)
	if c := is2.cur.Load().cursor.Load(); c < uint64(len(first)) {
		t.Fatalf("resumed at %d, but %d were handed out", c, len(first))
	}
	second := drive(is2, clk, 2*time.Second, 50)
	if len(second) == 0 {
		t.Fatal("nothing issued after the restart")
	}
	a, b := recordsOf(t, is, first), recordsOf(t, is2, second)
	for k := range b {
		if a[k] {
			t.Fatal("a record handed out before the restart was handed out again")
		}
	}
}

func TestIssuerFailoverToBackup(t *testing.T) {
	g := generate(t, smallBudget, "failover")
	out := t.TempDir()
	m, err := Split(g.plan, g.dir, out, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	iss := make([]*Issuer, 3)
	for i := range iss {
		iss[i] = newTestIssuer(t, out, i, t0, clk, t.TempDir(), nil)
	}
	// Slot 0: everyone serves its own part. Instance 1 dies: its slot-0
	// part is skipped; the others learn it (SetDown).
	for _, is := range iss {
		if st := is.Status(); len(st.Files) != 1 {
			t.Fatalf("instance %d serves %v in slot 0", is.cfg.Instance, st.Files)
		}
	}
	iss[0].SetDown(1, true)
	iss[2].SetDown(1, true)
	clk.t = t0.Add(10 * time.Second)
	var served []string
	for _, i := range []int{0, 2} {
		iss[i].step(clk.t, 0)
		st := iss[i].Status()
		served = append(served, st.Files...)
	}
	// Slot 1: instance 1's part comes from its backup holder.
	var backup SplitPart
	for _, p := range m.Parts {
		if p.Slot == g.plan.Slots[1].ID && p.Primary == 1 {
			backup = p
		}
	}
	found := false
	for _, f := range served {
		if f == filepath.Base(backup.BackupPath) {
			found = true
		}
	}
	if !found || len(served) != 3 {
		t.Fatalf("slot 1 served %v; want the two primaries plus %s", served, backup.BackupPath)
	}
}

func TestIssuerDegradeHints(t *testing.T) {
	g := generate(t, smallBudget, "degrade")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), func(c *IssuerConfig) { c.ShakeCapacity = 1000 })
	_, _, h := is.Shake(nil, 1)
	if h.ProbPermille != 1000 || h.MinIntervalMS != 0 || h.RetryAfterMS != 1000 {
		t.Fatalf("normal hint %+v", *h)
	}
	is.mu.Lock()
	is.shakeRate = 4000 // four times the capacity
	is.mu.Unlock()
	is.updateHint()
	_, _, h = is.Shake(nil, 1)
	if h.ProbPermille != 250 || h.MinIntervalMS != 4000 {
		t.Fatalf("overload hint %+v, want probability 250‰ and 4s", *h)
	}
	is.SetDegrade(&ShakeHint{MinIntervalMS: 30000, ProbPermille: 100})
	if _, _, h = is.Shake(nil, 1); h.ProbPermille != 100 || h.MinIntervalMS != 30000 {
		t.Fatalf("operator hint %+v", *h)
	}
	is.SetDegrade(nil)
	is.mu.Lock()
	is.shakeRate = 10
	is.mu.Unlock()
	is.updateHint()
	if _, _, h = is.Shake(nil, 1); h.ProbPermille != 1000 || h.MinIntervalMS != 0 {
		t.Fatalf("hint after recovery %+v", *h)
	}
}

func TestIssuerIdleAndEnded(t *testing.T) {
	g := generate(t, smallBudget, "idle")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0.Add(-5 * time.Second)}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), nil)
	if _, res, _ := is.Shake(nil, 1); res != ShakeIdle {
		t.Fatalf("before the event: %v", res)
	}
	if d := is.NextSlotIn(); d != 5*time.Second {
		t.Fatalf("next slot in %v", d)
	}
	clk.t = t0.Add(time.Minute)
	is.step(clk.t, 0)
	if _, res, _ := is.Shake(nil, 1); res != ShakeEnded {
		t.Fatalf("after the event: %v", res)
	}
	if _, err := os.Stat(filepath.Join(is.cfg.StateDir, "slot-000001.json")); err == nil {
		t.Fatal("a journal was written for a slot never served")
	}
}

func TestShakeDoesNotAllocate(t *testing.T) {
	g := generate(t, smallBudget, "alloc")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), func(c *IssuerConfig) { c.Speed = 1000 })
	is.step(clk.t.Add(time.Second), time.Second)
	buf := make([]byte, 0, 128)
	if a := testing.AllocsPerRun(1000, func() { buf, _, _ = is.Shake(buf[:0], 5) }); a != 0 {
		t.Fatalf("Shake allocates %v times", a)
	}
}

// BenchmarkShakeDispenseSeal is the gateway's per-shake work: quota token,
// atomic cursor into the mapped file, GCM seal with uid, time, instance.
func BenchmarkShakeDispenseSeal(b *testing.B) {
	g := generate(b, smallBudget, "bench")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(b, g.dir, 0, t0, clk, b.TempDir(), nil)
	st := is.cur.Load()
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if st.tokens.Load() <= 0 { // refill outside the measured path's cost
			st.tokens.Store(1 << 40)
			if st.cursor.Load() >= st.total {
				st.cursor.Store(0)
			}
		}
		if st.cursor.Load() >= st.total {
			st.cursor.Store(0)
		}
		var res ShakeResult
		buf, res, _ = is.Shake(buf[:0], uint64(i))
		if res != ShakeTicket {
			b.Fatal(res)
		}
	}
}
