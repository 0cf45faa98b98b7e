package shake

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestBitFlipAnywhereDetected(t *testing.T) {
	g := generate(t, smallBudget, "flip")
	f, err := OpenFile(g.files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o := NewChecker(g.plan, g.keys, nil, nil).NewOpener()
	rec := make([]byte, RecordSize)
	for i := 0; i < f.Len(); i += f.Len() / 300 {
		copy(rec, f.Record(i))
		if _, err := o.Open(rec); err != nil {
			t.Fatalf("record %d does not verify: %v", i, err)
		}
		for bit := 0; bit < RecordSize*8; bit++ {
			rec[bit/8] ^= 1 << (bit % 8)
			if tk, err := o.Open(rec); err == nil {
				t.Fatalf("record %d with bit %d flipped verifies as %+v", i, bit, tk)
			}
			rec[bit/8] ^= 1 << (bit % 8)
		}
	}
	// And in a file, with the checksum fixed up, Verify counts it.
	rewriteRecords(t, g.files[1], func(recs []byte) { recs[5*RecordSize+9] ^= 0x10 })
	rep, err := Verify(g.plan, g.keys, g.files, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.BadTicket != 1 || rep.Missing != 1 || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "record 5") {
		t.Fatalf("flipped record: %+v", rep)
	}
}

func TestDamageCaughtByChecksum(t *testing.T) {
	g := generate(t, smallBudget, "crc")
	data, _ := os.ReadFile(g.files[0])
	data[HeaderSize+100] ^= 1
	os.WriteFile(g.files[0], data, 0o644)
	if _, err := Verify(g.plan, g.keys, g.files, VerifyOptions{}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("damaged file: %v", err)
	}
}

func TestKeyPolicy(t *testing.T) {
	g := generate(t, smallBudget, "keys")
	f, _ := OpenFile(g.files[0])
	defer f.Close()
	rec := f.Record(0)
	kid := RecordKeyID(rec)

	// Unknown: a store without that key.
	keys := map[uint16][]byte{}
	for id := 0; id < g.plan.Keys; id++ {
		if uint16(id) != kid {
			keys[uint16(id)] = make([]byte, 16)
		}
	}
	partial, _ := NewKeyStore(keys)
	if _, err := NewChecker(g.plan, partial, nil, nil).NewOpener().Open(rec); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("unknown key: %v", err)
	}
	// Blacklisted, and not on a whitelist.
	if _, err := NewChecker(g.plan, g.keys, nil, []uint16{kid}).NewOpener().Open(rec); !errors.Is(err, ErrKeyBlacklisted) {
		t.Errorf("blacklisted key: %v", err)
	}
	if _, err := NewChecker(g.plan, g.keys, []uint16{kid + 1}, nil).NewOpener().Open(rec); !errors.Is(err, ErrKeyNotAllowed) {
		t.Errorf("key off the whitelist: %v", err)
	}
	if _, err := NewChecker(g.plan, g.keys, []uint16{kid}, nil).NewOpener().Open(rec); err != nil {
		t.Errorf("whitelisted key: %v", err)
	}
	// Same key id, different key material (a store of another event).
	other, _ := RandomKeyStore(g.plan.Keys)
	if _, err := NewChecker(g.plan, other, nil, nil).NewOpener().Open(rec); !errors.Is(err, ErrBadTicket) {
		t.Errorf("foreign key material: %v", err)
	}
	// Records under a key that is on the store but that the plan never
	// used (a thief holding the store but forging with an idle key) still
	// carry a valid-looking plaintext only if sealed by a key holder:
	// a record sealed with key id 3 but placed under id 4 fails.
	var pt [16]byte
	forged := make([]byte, RecordSize)
	lo, hi := packTicket(0, 100, 0, 3, g.plan.Tag)
	sealRecord(forged, &pt, g.keys.block(3), 3, lo, hi)
	forged[0] = 4
	if _, err := NewChecker(g.plan, g.keys, nil, nil).NewOpener().Open(forged); !errors.Is(err, ErrBadTicket) {
		t.Errorf("record moved to another key id: %v", err)
	}
	// Verify counts blacklisted records and the packets they hide.
	rep, err := Verify(g.plan, g.keys, g.files, VerifyOptions{Deny: []uint16{kid}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.Blacklisted == 0 || rep.Missing != rep.Blacklisted {
		t.Errorf("verify with key %d blacklisted: blacklisted %d missing %d", kid, rep.Blacklisted, rep.Missing)
	}
}

func TestTicketFieldsChecked(t *testing.T) {
	p := mustPlan(t, smallBudget, "A")
	p.Seal([16]byte{9})
	ks, _ := RandomKeyStore(p.Keys)
	o := NewChecker(p, ks, nil, nil).NewOpener()
	b := p.Batches[2]
	var pt [16]byte
	seal := func(pid uint64, amt Money, batch uint32, tag uint32) error {
		rec := make([]byte, RecordSize)
		lo, hi := packTicket(pid, amt, batch, 1, tag)
		sealRecord(rec, &pt, ks.block(1), 1, lo, hi)
		_, err := o.Open(rec)
		return err
	}
	if err := seal(b.FirstPacket, b.Min, b.ID, p.Tag); err != nil {
		t.Fatalf("valid ticket: %v", err)
	}
	bad := map[string]error{
		"other plan tag":        seal(b.FirstPacket, b.Min, b.ID, p.Tag^1),
		"packet of other batch": seal(b.FirstPacket+b.Count, b.Min, b.ID, p.Tag),
		"amount under min":      seal(b.FirstPacket, b.Min-1, b.ID, p.Tag),
		"amount over max":       seal(b.FirstPacket, b.Max+1, b.ID, p.Tag),
		"unknown batch":         seal(0, b.Min, uint32(len(p.Batches)), p.Tag),
	}
	for name, err := range bad {
		if !errors.Is(err, ErrBadTicket) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestDuplicateRecordCaught(t *testing.T) {
	g := generate(t, smallBudget, "dup")
	// Record 10 of slot 1 overwritten by record 3: one duplicate, one gap.
	rewriteRecords(t, g.files[0], func(recs []byte) {
		copy(recs[10*RecordSize:11*RecordSize], recs[3*RecordSize:4*RecordSize])
	})
	rep, err := Verify(g.plan, g.keys, g.files, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.Duplicates != 1 || rep.Missing != 1 || rep.BadTicket != 0 {
		t.Fatalf("duplicate: dup %d missing %d bad %d", rep.Duplicates, rep.Missing, rep.BadTicket)
	}
	// A record copied into another slot's file: duplicate and wrong slot.
	g2 := generate(t, smallBudget, "dup2")
	one, _ := os.ReadFile(g2.files[0])
	rewriteRecords(t, g2.files[1], func(recs []byte) { copy(recs[:RecordSize], one[HeaderSize:HeaderSize+RecordSize]) })
	rep, _ = Verify(g2.plan, g2.keys, g2.files, VerifyOptions{})
	if rep.OK() || rep.Duplicates != 1 || rep.Missing != 1 {
		t.Fatalf("record moved across slots: %+v", rep)
	}
	if len(rep.Mismatches) == 0 {
		t.Errorf("batch totals should disagree after a record was replaced")
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Tag: 0xABCDEF1, Slot: 42, Part: 2, Parts: 5, Instance: 2, Backup: 4, RecordCRC: 77, Count: 123456, First: 99}
	b := h.Marshal()
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for i := 0; i < HeaderSize*8; i++ {
		c := append([]byte(nil), b...)
		c[i/8] ^= 1 << (i % 8)
		if _, err := ParseHeader(c); !errors.Is(err, ErrBadHeader) {
			t.Fatalf("bit %d flipped in the header accepted", i)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	h := Header{Tag: 5, Slot: 1, Parts: 1, Instance: NoInstance, Backup: NoInstance, Count: 10}
	f.Add(h.Marshal())
	f.Add([]byte("LLTICKET"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("error not ErrBadHeader: %v", err)
			}
			return
		}
		if again, err := ParseHeader(h.Marshal()); err != nil || again != h {
			t.Fatalf("accepted header does not round-trip: %+v %v", again, err)
		}
	})
}

// FuzzOpen feeds arbitrary records to a checker: none may panic, and a
// random record verifying would be a 2^-44 event.
func FuzzOpen(f *testing.F) {
	p := mustPlan(f, smallBudget, "A")
	p.Seal([16]byte{1})
	ks, _ := RandomKeyStore(p.Keys)
	o := NewChecker(p, ks, nil, nil).NewOpener()
	f.Add(make([]byte, RecordSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < RecordSize {
			return
		}
		if tk, err := o.Open(b); err == nil {
			t.Fatalf("random record %x verifies as %+v", b[:RecordSize], tk)
		}
	})
}

func TestOpenFileRejectsWrongSize(t *testing.T) {
	g := generate(t, smallBudget, "size")
	data, _ := os.ReadFile(g.files[0])
	bad := filepath.Join(t.TempDir(), "short.llt")
	os.WriteFile(bad, data[:len(data)-1], 0o644)
	if _, err := OpenFile(bad); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("truncated file: %v", err)
	}
}

func TestDispenserEachRecordOnce(t *testing.T) {
	g := generate(t, smallBudget, "disp")
	f, _ := OpenFile(g.files[0])
	defer f.Close()
	d := NewDispenser(f, 0)
	seen := make([]int32, f.Len())
	var wg sync.WaitGroup
	var mu sync.Mutex
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []uint64
			for {
				rec, i, ok := d.Next()
				if !ok {
					break
				}
				if !bytes.Equal(rec, f.Record(int(i))) {
					t.Errorf("record %d mismatch", i)
				}
				local = append(local, i)
			}
			mu.Lock()
			for _, i := range local {
				seen[i]++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for i, n := range seen {
		if n != 1 {
			t.Fatalf("record %d dispensed %d times", i, n)
		}
	}
	if d.Taken() != f.Count {
		t.Fatalf("taken %d of %d", d.Taken(), f.Count)
	}
}

func TestOpenDoesNotAllocate(t *testing.T) {
	g := generate(t, smallBudget, "alloc")
	f, _ := OpenFile(g.files[0])
	defer f.Close()
	o := NewChecker(g.plan, g.keys, nil, nil).NewOpener()
	d := NewDispenser(f, 0)
	if n := testing.AllocsPerRun(1000, func() {
		rec, _, _ := d.Next()
		if _, err := o.Open(rec); err != nil {
			panic(err)
		}
	}); n != 0 {
		t.Fatalf("Next+Open allocates %.1f times", n)
	}
}

func TestKeyStoreFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if err := CreateKeyStore(dir, 5); err != nil {
		t.Fatal(err)
	}
	if err := CreateKeyStore(dir, 5); err == nil {
		t.Fatal("overwrote an existing key store")
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, KeyFile): 0o600} {
		st, _ := os.Stat(p)
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	ks, err := LoadKeyStore(dir)
	if err != nil || ks.Len() != 5 || !ks.Has(4) || ks.Has(5) {
		t.Fatalf("load: %v %v", ks, err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	if s := fmt.Sprintf("%v %+v %s", ks, ks, ks); strings.Contains(s, string(raw[40:60])) || strings.Contains(s, "key\"") {
		t.Errorf("key store prints material: %s", s)
	}
	os.Chmod(filepath.Join(dir, KeyFile), 0o644)
	if _, err := LoadKeyStore(dir); err == nil || !strings.Contains(err.Error(), "group or other") {
		t.Errorf("world-readable key file loaded: %v", err)
	}
	os.Chmod(filepath.Join(dir, KeyFile), 0o600)
	os.Chmod(dir, 0o755)
	if _, err := LoadKeyStore(dir); err == nil {
		t.Errorf("world-readable key directory loaded")
	}
}
