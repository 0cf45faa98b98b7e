package shake

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func nonceCounter(sealed []byte) uint64 { return binary.LittleEndian.Uint64(sealed[5:sealHdr]) }

// waitIdle waits for a background mark reservation to finish (a crash
// would kill it; the test only needs the file quiet before the "restart").
func waitIdle(t *testing.T, s *Sealer) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.busy.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("background mark reservation did not finish")
		}
	}
}

// TestSealNonceSurvivesClockStepBack (issue 16 item 14): the nonce counter
// used to restart from the wall clock, so a clock set back across a restart
// reused nonces under the same GCM key. With the persisted mark every
// counter after a restart lies above every counter before it, however far
// the clock went back, across many block reservations (both the background
// and the blocking path).
func TestSealNonceSurvivesClockStepBack(t *testing.T) {
	sk, err := RandomSealKeys(1)
	if err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(t.TempDir(), "state", "seal-nonce")
	rec := make([]byte, RecordSize)
	seen := map[uint64]bool{}
	t0 := time.Unix(1_800_000_000, 0)
	var high uint64
	for run, clock := range []time.Time{t0, t0.Add(-time.Hour), t0.Add(-time.Hour), t0.Add(-24 * time.Hour), t0.Add(time.Nanosecond)} {
		s, err := openSealer(sk, 3, mark, clock, 8)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		low := uint64(0)
		for i := range 200 {
			b := s.AppendSealed(nil, rec, 1, 1)
			if len(b) != SealedSize {
				t.Fatalf("run %d seal %d: not sealed", run, i)
			}
			c := nonceCounter(b)
			if seen[c] {
				t.Fatalf("run %d (clock %v): nonce counter %d repeated", run, clock.Sub(t0), c)
			}
			if c <= high {
				t.Fatalf("run %d: counter %d not above the previous run's %d", run, c, high)
			}
			seen[c] = true
			low = max(low, c)
		}
		high = low
		waitIdle(t, s)
	}
	if st, err := os.Stat(mark); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mark file: %v %v", st, err)
	}
}

// TestSealNonceMarkFailsClosed: when the mark cannot be written, sealing
// stops once the reserved block is used, rather than handing out counters
// a restart could repeat; it resumes when the mark can be written again.
func TestSealNonceMarkFailsClosed(t *testing.T) {
	sk, _ := RandomSealKeys(1)
	dir := filepath.Join(t.TempDir(), "state")
	mark := filepath.Join(dir, "seal-nonce")
	s, err := openSealer(sk, 1, mark, time.Now(), 8)
	if err != nil {
		t.Fatal(err)
	}
	s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	rec := make([]byte, RecordSize)
	if err := os.RemoveAll(dir); err != nil { // every mark write now fails
		t.Fatal(err)
	}
	var last uint64
	sealed := 0
	for range 100 {
		if b := s.AppendSealed(nil, rec, 1, 1); len(b) == SealedSize {
			sealed++
			last = nonceCounter(b)
		}
	}
	if sealed == 0 || sealed > 8 {
		t.Fatalf("%d seals without a writable mark; want the reserved block (1..8) only", sealed)
	}
	if last >= s.limit.Load() {
		t.Fatalf("sealed with counter %d beyond the reserved limit %d", last, s.limit.Load())
	}
	waitIdle(t, s)
	os.MkdirAll(dir, 0o700)
	s.failedAt.Store(0) // skip the one-second retry pause
	b := s.AppendSealed(nil, rec, 1, 1)
	if len(b) != SealedSize || nonceCounter(b) <= last {
		t.Fatal("sealing did not resume above the old counters once the mark was writable")
	}
	if data, err := os.ReadFile(mark); err != nil || len(data) == 0 {
		t.Fatalf("mark not rewritten: %v", err)
	}
}

func TestSealNonceMarkCorruptRefused(t *testing.T) {
	sk, _ := RandomSealKeys(1)
	mark := filepath.Join(t.TempDir(), "seal-nonce")
	os.WriteFile(mark, []byte("12x\n"), 0o600)
	if _, err := OpenSealer(sk, 1, mark); err == nil || !strings.Contains(err.Error(), mark) {
		t.Fatalf("corrupt mark: %v", err)
	}
	os.Remove(mark)
	s, err := OpenSealer(sk, 1, mark)
	if err != nil {
		t.Fatal(err)
	}
	if c := nonceCounter(s.AppendSealed(nil, make([]byte, RecordSize), 1, 1)); c < uint64(time.Now().Add(-time.Minute).UnixNano()) {
		t.Fatalf("fresh mark: counter %d below the clock", c)
	}
}

// TestDurableWritesSyncTheDirectory (issue 16 item 14): the cursor journal
// (and plan.json, the nonce mark) were renamed into place without an fsync
// of the directory, so a crash could bring back the old journal. The
// directory must be synced after the rename.
func TestDurableWritesSyncTheDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "slot-000001.json")
	var synced []string
	old := syncDir
	syncDir = func(d string) error {
		data, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(data), "99") {
			t.Errorf("directory synced before the rename landed: %q %v", data, err)
		}
		synced = append(synced, d)
		return old(d)
	}
	defer func() { syncDir = old }()
	if err := writeJournal(path, journalJSON{Slot: 1, Mark: 99}); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 1 || synced[0] != dir {
		t.Fatalf("journal write synced directories %v, want [%s]", synced, dir)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("temporary journal left behind")
	}
}

// TestPlanWrittenOwnerOnly (issue 16 item 14): plan.json names merchant
// accounts and was written 0644; it is 0600 even over an old 0644 file and
// a leftover temporary file.
func TestPlanWrittenOwnerOnly(t *testing.T) {
	g := generate(t, smallBudget, "mode")
	p, dir := g.plan, g.dir
	os.Chmod(filepath.Join(dir, PlanFile), 0o644)
	os.WriteFile(filepath.Join(dir, PlanFile+".tmp"), []byte("{}"), 0o644)
	if err := p.WritePlan(dir); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, PlanFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("plan.json mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if _, err := LoadPlan(dir); err != nil {
		t.Fatalf("plan written 0600 does not load: %v", err)
	}
}

// TestShakeFailsClosedWithoutNonce: a shake that cannot get a reserved
// nonce answers "none" and counts nothing as issued.
func TestShakeFailsClosedWithoutNonce(t *testing.T) {
	g := generate(t, smallBudget, "nonce")
	t0 := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t0}
	is := newTestIssuer(t, g.dir, 0, t0, clk, t.TempDir(), nil)
	sk, _ := RandomSealKeys(1)
	dir := filepath.Join(t.TempDir(), "state")
	s, err := openSealer(sk, 0, filepath.Join(dir, "seal-nonce"), time.Now(), 8)
	if err != nil {
		t.Fatal(err)
	}
	s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	is.sealer = s
	os.RemoveAll(dir)
	is.cur.Load().tokens.Store(1 << 20)
	tickets := 0
	for i := range 50 {
		out, res, _ := is.Shake(nil, uint64(i))
		switch {
		case res == ShakeTicket && len(out) == SealedSize:
			tickets++
		case res == ShakeTicket:
			t.Fatalf("ticket of %d bytes", len(out))
		case len(out) != 0:
			t.Fatalf("result %v with %d bytes", res, len(out))
		}
	}
	waitIdle(t, s)
	if tickets == 0 || tickets > 8 || is.issued.Load() != uint64(tickets) {
		t.Fatalf("%d tickets (issued counter %d) without a writable mark; want 1..8, equal", tickets, is.issued.Load())
	}
}
