package shake

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestBackupOf(t *testing.T) {
	for n := 2; n <= 12; n++ {
		for si := 0; si < 3*n; si++ {
			for p := 0; p < n; p++ {
				if b := BackupOf(p, si, n); b == p || b < 0 || b >= n {
					t.Fatalf("n=%d slot %d part %d: backup %d", n, si, p, b)
				}
			}
		}
		// Across n-1 consecutive slots, one instance's parts are backed up
		// by every other instance once: a failure spreads its load.
		if n > 2 {
			got := map[int]bool{}
			for si := 0; si < n-1; si++ {
				got[BackupOf(0, si, n)] = true
			}
			if len(got) != n-1 {
				t.Fatalf("n=%d: instance 0 backed up by %v only", n, got)
			}
		}
	}
}

func TestSplitCoversEveryRecordOncePerCopy(t *testing.T) {
	g := generate(t, smallBudget, "split")
	for _, n := range []int{2, 3, 5} {
		out := t.TempDir()
		m, err := Split(g.plan, g.dir, out, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Parts) != n*len(g.plan.Slots) {
			t.Fatalf("%d parts", len(m.Parts))
		}
		for _, p := range m.Parts {
			if p.Primary == p.Backup {
				t.Fatalf("part on the same instance twice: %+v", p)
			}
			a, _ := os.ReadFile(filepath.Join(out, p.PrimaryPath))
			b, _ := os.ReadFile(filepath.Join(out, p.BackupPath))
			if !bytes.Equal(a, b) {
				t.Fatalf("backup of %s differs", p.PrimaryPath)
			}
			if !strings.HasPrefix(p.PrimaryPath, InstanceDir(p.Primary)) || !strings.HasPrefix(p.BackupPath, InstanceDir(p.Backup)) {
				t.Fatalf("part in the wrong instance directory: %+v", p)
			}
		}
		plan, err := LoadPlan(out)
		if err != nil {
			t.Fatal(err)
		}
		pr, br, err := VerifySplit(plan, g.keys, out, VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for name, r := range map[string]*VerifyReport{"primary": pr, "backup": br} {
			if !r.OK() || r.Records != g.plan.Packets || r.Files != n*len(g.plan.Slots) {
				t.Fatalf("n=%d %s copy: ok=%v records %d files %d", n, name, r.OK(), r.Records, r.Files)
			}
		}
	}
}

func TestSplitVerifyCatchesMissingBackup(t *testing.T) {
	g := generate(t, smallBudget, "split2")
	out := t.TempDir()
	m, err := Split(g.plan, g.dir, out, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Replace one backup by another part's file: headers disagree.
	src, _ := os.ReadFile(filepath.Join(out, m.Parts[1].BackupPath))
	os.WriteFile(filepath.Join(out, m.Parts[0].BackupPath), src, 0o644)
	if _, _, err := VerifySplit(g.plan, g.keys, out, VerifyOptions{}); err == nil {
		t.Fatal("swapped backup accepted")
	}
}

func writeLedger(t *testing.T, lines []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ledger.csv")
	os.WriteFile(path, []byte("packet_id,amount_fen,uid,opened_at\n"+strings.Join(lines, "\n")+"\n"), 0o644)
	return path
}

func TestReconcile(t *testing.T) {
	g := generate(t, smallBudget, "recon")
	// Open every third packet of slot 1 and every packet of slot 7.
	o := NewChecker(g.plan, g.keys, nil, nil).NewOpener()
	path := filepath.Join(t.TempDir(), "ledger.csv")
	lf, _ := os.Create(path)
	lw, _ := NewLedgerWriter(lf)
	var opened []Ticket
	for fi, name := range g.files {
		f, _ := OpenFile(name)
		for i := 0; i < f.Len(); i++ {
			if fi == 0 && i%3 != 0 {
				continue
			}
			tk, err := o.Open(f.Record(i))
			if err != nil {
				t.Fatal(err)
			}
			opened = append(opened, tk)
			lw.Write(tk.PacketID, tk.Amount, uint64(i), "2016-02-07T20:00:00+08:00")
		}
		f.Close()
	}
	lw.Flush()
	lf.Close()
	for _, shard := range []uint64{0, 10007} {
		r, err := Reconcile(g.plan, g.keys, g.files, path, ReconcileOptions{ShardPackets: shard})
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK() || r.LedgerEntries != uint64(len(opened)) || r.Opened.Count != uint64(len(opened)) {
			t.Fatalf("shard %d: clean ledger: %+v", shard, r)
		}
		var want Money
		for _, tk := range opened {
			want += tk.Amount
		}
		var opAmt, unAmt Money
		for _, m := range r.Merchants {
			opAmt += m.Opened.Amount
			unAmt += m.Unopened.Amount
		}
		if r.Opened.Amount != want || opAmt != want || opAmt+unAmt != g.plan.Amount {
			t.Fatalf("totals: opened %v (want %v), unopened %v, plan %v", opAmt, want, unAmt, g.plan.Amount)
		}
	}

	// A ledger with a forged packet, a changed amount and a double open.
	a, b := opened[0], opened[1]
	bad := writeLedger(t, []string{
		itoa(a.PacketID) + "," + itoa(uint64(a.Amount)) + ",1,x",
		itoa(b.PacketID) + "," + itoa(uint64(b.Amount)+1) + ",2,x", // amount changed
		itoa(a.PacketID) + "," + itoa(uint64(a.Amount)) + ",3,x",   // opened again
		itoa(g.plan.Packets+5) + ",100,4,x",                        // never generated
	})
	for _, shard := range []uint64{0, 1000} {
		r, err := Reconcile(g.plan, g.keys, g.files, bad, ReconcileOptions{ShardPackets: shard})
		if err != nil {
			t.Fatal(err)
		}
		if r.OK() || r.NotGenerated != 1 || r.AmountMismatch != 1 || r.OpenedTwice != 1 || r.LedgerEntries != 4 {
			t.Fatalf("shard %d: bad ledger: %+v", shard, r)
		}
	}
	// A packet the ledger opened but that was cut from the files (e.g. a
	// forged id inside the id space): not generated.
	rewriteRecords(t, g.files[1], func(recs []byte) {
		// Overwrite record 0 with record 1: record 0's packet disappears.
		copy(recs[:RecordSize], recs[RecordSize:2*RecordSize])
	})
	r, err := Reconcile(g.plan, g.keys, g.files, path, ReconcileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.NotGenerated != 1 || r.FileProblems != 1 {
		t.Fatalf("packet missing from files: not generated %d, file problems %d", r.NotGenerated, r.FileProblems)
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

func TestLedgerReader(t *testing.T) {
	in := "uid,amount_fen,extra,packet_id\r\n7,150,x,42\r\n\n8,1,y,0\n"
	lr, err := NewLedgerReader(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var got []LedgerEntry
	for {
		e, err := lr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != 2 || got[0].PacketID != 42 || got[0].Amount != 150 || got[1].PacketID != 0 || got[1].Line != 4 {
		t.Fatalf("entries %+v", got)
	}
	bad := []string{
		"",
		"packet_id,uid\n1,2\n",
		"packet_id,amount_fen\n1,0\n",
		"packet_id,amount_fen\n1,2,3\n",
		"packet_id,amount_fen\n-1,2\n",
		"packet_id,amount_fen\n\"1\",2\n",
		"packet_id,amount_fen\n1,99999999\n",
		"packet_id,amount_fen\n1," + strings.Repeat("1", 5000) + "\n",
		"packet_id,packet_id,amount_fen\n",
	}
	for _, s := range bad {
		lr, err := NewLedgerReader(strings.NewReader(s))
		if err == nil {
			_, err = lr.Next()
		}
		if !errors.Is(err, ErrBadLedger) {
			t.Errorf("%q: %v", s, err)
		}
	}
}

func FuzzLedger(f *testing.F) {
	f.Add([]byte("packet_id,amount_fen,uid,opened_at\n1,2,3,x\n4,5,6,y\n"))
	f.Add([]byte("amount_fen,packet_id\r\n9,8\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lr, err := NewLedgerReader(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadLedger) {
				t.Fatalf("header error not ErrBadLedger: %v", err)
			}
			return
		}
		for i := 0; i < len(data)+1; i++ {
			e, err := lr.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				if !errors.Is(err, ErrBadLedger) {
					t.Fatalf("error not ErrBadLedger: %v", err)
				}
				return
			}
			if e.Amount < 1 || e.Amount > MaxPacketAmount || e.PacketID >= MaxPackets {
				t.Fatalf("accepted out-of-range entry %+v", e)
			}
		}
		t.Fatal("reader did not end")
	})
}
