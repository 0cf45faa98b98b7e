package shake

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// With seal keys, Reconcile checks each credited packet's user against the
// sealed ticket that proves the claim, not only its amount.
func TestReconcileChecksUsers(t *testing.T) {
	g := generate(t, smallBudget, "recon-users")
	sk, err := RandomSealKeys(1)
	if err != nil {
		t.Fatal(err)
	}
	sealer := NewSealer(sk, 3)
	o := NewChecker(g.plan, g.keys, nil, nil).NewOpener()
	f, err := OpenFile(g.files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(edit func(i int, uid *uint64, sealed []byte) []byte) string {
		path := filepath.Join(t.TempDir(), "ledger.csv")
		lf, _ := os.Create(path)
		lw, _ := NewLedgerWriter(lf)
		for i := 0; i < 50; i++ {
			tk, err := o.Open(f.Record(i))
			if err != nil {
				t.Fatal(err)
			}
			uid := uint64(100 + i)
			sealed := sealer.AppendSealed(nil, f.Record(i), uid, uint32(time.Now().Unix()))
			sealed = edit(i, &uid, sealed)
			if err := lw.WriteClaim(tk.PacketID, tk.Amount, uid, "2016-02-07T20:00:00+08:00", sealed); err != nil {
				t.Fatal(err)
			}
		}
		lw.Flush()
		lf.Close()
		return path
	}
	rec := func(path string, seal *SealKeys) *ReconcileReport {
		r, err := Reconcile(g.plan, g.keys, g.files, path, ReconcileOptions{SealKeys: seal})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	clean := write(func(_ int, _ *uint64, s []byte) []byte { return s })
	if r := rec(clean, sk); !r.OK() || !r.UsersChecked {
		t.Fatalf("clean: %+v", r)
	}
	// Packet 3 credited to someone else; packet 4 without proof; packet 5
	// with a proof for another packet; packet 6 with a forged seal.
	other := sealer.AppendSealed(nil, f.Record(40), 105, uint32(time.Now().Unix()))
	bad := write(func(i int, uid *uint64, s []byte) []byte {
		switch i {
		case 3:
			*uid = 999
		case 4:
			return nil
		case 5:
			return other
		case 6:
			s[20] ^= 1
		}
		return s
	})
	r := rec(bad, sk)
	if r.OK() || r.UserMismatch != 1 || r.Unproven != 3 {
		t.Fatalf("tampered: user mismatch %d, unproven %d (want 1, 3): %v", r.UserMismatch, r.Unproven, r.Problems)
	}
	if !strings.Contains(strings.Join(r.Problems, "\n"), "credited to uid 999, but dispensed to uid 103") {
		t.Fatalf("problems %v", r.Problems)
	}
	// Without seal keys amounts alone are checked, and the report says so.
	if r := rec(bad, nil); !r.OK() || r.UsersChecked {
		t.Fatalf("without seal keys: %+v", r)
	}
}
