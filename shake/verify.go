package shake

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"sync/atomic"
)

// VerifyOptions tune Verify.
type VerifyOptions struct {
	Workers     int
	Allow, Deny []uint16 // key whitelist and blacklist
	Progress    Progress
	MaxProblems int // problems listed in full (default 20); all are counted
}

// Totals is a count of packets and their money.
type Totals struct {
	Count  uint64 `json:"count"`
	Amount Money  `json:"amount_fen"`
}

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	Files   int
	Records uint64
	// Failures by kind.
	BadTicket, UnknownKey, Blacklisted, NotAllowed, Duplicates, WrongSlot uint64
	Missing                                                               uint64 // plan packets absent from the files
	Batches                                                               []Totals
	Slots                                                                 map[uint32]Totals
	Merchants                                                             []Totals // by merchant index
	MaxKeyAmount                                                          Money    // largest amount under one key
	MaxKeyID                                                              uint16
	Problems                                                              []string // first MaxProblems, with places
	Mismatches                                                            []string // totals that disagree with the plan
}

// OK reports whether every record verified, every packet of the plan is
// present exactly once and every total matches.
func (r *VerifyReport) OK() bool {
	return r.BadTicket+r.UnknownKey+r.Blacklisted+r.NotAllowed+r.Duplicates+r.WrongSlot+r.Missing == 0 && len(r.Mismatches) == 0
}

type verifyWorker struct {
	batches  []Totals
	keys     []uint64
	fails    [6]uint64 // bad, unknown, blacklisted, notallowed, dup, wrongslot
	problems []string
}

// Verify decrypts and checks every record of files against plan: each
// ticket valid under an allowed key, in a file of its own slot, each packet
// id exactly once over all files (a bitmap over the plan's dense id
// space), per-batch counts and sums equal to the plan's (hence per slot and
// merchant too), and no key over the plan's key limit. The error is for
// files that cannot be read or do not belong to the plan; verification
// failures are in the report.
func Verify(plan *Plan, keys *KeyStore, files []string, opts VerifyOptions) (*VerifyReport, error) {
	if opts.MaxProblems <= 0 {
		opts.MaxProblems = 20
	}
	c := NewChecker(plan, keys, opts.Allow, opts.Deny)
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	ws := make([]*verifyWorker, workers)
	for i := range ws {
		ws[i] = &verifyWorker{batches: make([]Totals, len(plan.Batches)), keys: make([]uint64, MaxKeys)}
	}
	seen := make([]uint64, (plan.Packets+63)/64)
	rep := &VerifyReport{Files: len(files)}
	var records atomic.Uint64
	fileFn := func(f *File) error {
		if plan.SlotIndex(f.Slot) < 0 {
			return fmt.Errorf("%s: slot %d is not in plan %q", f.Path, f.Slot, plan.Name)
		}
		records.Add(f.Count)
		return nil
	}
	fn := func(w int, t Ticket, err error, rec []byte, f *File, i int) {
		st := ws[w]
		kind := -1
		switch {
		case err == nil:
		case errors.Is(err, ErrUnknownKey):
			kind = 1
		case errors.Is(err, ErrKeyBlacklisted):
			kind = 2
		case errors.Is(err, ErrKeyNotAllowed):
			kind = 3
		default:
			kind = 0
		}
		if kind < 0 {
			bit := uint64(1) << (t.PacketID & 63)
			if atomic.OrUint64(&seen[t.PacketID>>6], bit)&bit != 0 {
				kind, err = 4, fmt.Errorf("packet %d appears more than once", t.PacketID)
			} else if plan.Batches[t.Batch].Slot != f.Slot {
				kind, err = 5, fmt.Errorf("packet %d of slot %d in a file of slot %d", t.PacketID, plan.Batches[t.Batch].Slot, f.Slot)
			}
		}
		if kind >= 0 {
			st.fails[kind]++
			if len(st.problems) < opts.MaxProblems {
				st.problems = append(st.problems, fmt.Sprintf("%s record %d (key %d): %v", f.Path, i, RecordKeyID(rec), err))
			}
			if kind != 5 {
				return
			}
		}
		bt := &st.batches[t.Batch]
		bt.Count++
		bt.Amount += t.Amount
		st.keys[t.Key] += uint64(t.Amount)
	}
	if err := scanFiles(c, files, workers, opts.Progress, fileFn, fn); err != nil {
		return nil, err
	}
	rep.Records = records.Load()
	rep.Batches = make([]Totals, len(plan.Batches))
	keySums := make([]uint64, MaxKeys)
	for _, st := range ws {
		for i, b := range st.batches {
			rep.Batches[i].Count += b.Count
			rep.Batches[i].Amount += b.Amount
		}
		for k, v := range st.keys {
			keySums[k] += v
		}
		rep.BadTicket += st.fails[0]
		rep.UnknownKey += st.fails[1]
		rep.Blacklisted += st.fails[2]
		rep.NotAllowed += st.fails[3]
		rep.Duplicates += st.fails[4]
		rep.WrongSlot += st.fails[5]
		for _, p := range st.problems {
			if len(rep.Problems) < opts.MaxProblems {
				rep.Problems = append(rep.Problems, p)
			}
		}
	}
	var unique uint64
	for _, w := range seen {
		unique += uint64(bits.OnesCount64(w))
	}
	rep.Missing = plan.Packets - unique
	for k, v := range keySums {
		if Money(v) > rep.MaxKeyAmount {
			rep.MaxKeyAmount, rep.MaxKeyID = Money(v), uint16(k)
		}
	}
	if rep.MaxKeyAmount > plan.KeyLimit {
		rep.Mismatches = append(rep.Mismatches, fmt.Sprintf("key %d encrypts %s, over the key limit %s", rep.MaxKeyID, rep.MaxKeyAmount, plan.KeyLimit))
	}
	rep.Slots = map[uint32]Totals{}
	rep.Merchants = make([]Totals, len(plan.Merchants))
	for i, b := range plan.Batches {
		got := rep.Batches[i]
		if got.Count != b.Count || got.Amount != b.Amount {
			rep.Mismatches = append(rep.Mismatches, fmt.Sprintf("batch %d (slot %d, %s, %s): files hold %d packets / %s, plan says %d / %s",
				i, b.Slot, b.Kind, plan.Merchants[b.Merchant].ID, got.Count, got.Amount, b.Count, b.Amount))
		}
		s := rep.Slots[b.Slot]
		s.Count += got.Count
		s.Amount += got.Amount
		rep.Slots[b.Slot] = s
		m := &rep.Merchants[b.Merchant]
		m.Count += got.Count
		m.Amount += got.Amount
	}
	return rep, nil
}

// Print writes a human-readable summary of the report.
func (r *VerifyReport) Print(w io.Writer, plan *Plan) {
	fmt.Fprintf(w, "files %d, records %d, plan %q: %d packets, %s\n", r.Files, r.Records, plan.Name, plan.Packets, plan.Amount)
	for _, s := range plan.Slots {
		t := r.Slots[s.ID]
		fmt.Fprintf(w, "  slot %-6d %12d packets %16s   (plan %d / %s)\n", s.ID, t.Count, t.Amount, s.Packets, s.Amount)
	}
	for i, m := range plan.Merchants {
		var want Totals
		for _, b := range plan.Batches {
			if b.Merchant == i {
				want.Count += b.Count
				want.Amount += b.Amount
			}
		}
		fmt.Fprintf(w, "  merchant %-12s %12d packets %16s   (plan %d / %s)\n", m.ID, r.Merchants[i].Count, r.Merchants[i].Amount, want.Count, want.Amount)
	}
	fmt.Fprintf(w, "  largest amount under one key: %s (key %d, limit %s)\n", r.MaxKeyAmount, r.MaxKeyID, plan.KeyLimit)
	fmt.Fprintf(w, "failures: bad ticket %d, unknown key %d, blacklisted key %d, key not whitelisted %d, duplicates %d, wrong slot %d, missing %d\n",
		r.BadTicket, r.UnknownKey, r.Blacklisted, r.NotAllowed, r.Duplicates, r.WrongSlot, r.Missing)
	for _, p := range r.Problems {
		fmt.Fprintln(w, "  ", p)
	}
	for _, m := range r.Mismatches {
		fmt.Fprintln(w, "  mismatch:", m)
	}
	if r.OK() {
		fmt.Fprintln(w, "OK")
	} else {
		fmt.Fprintln(w, "FAILED")
	}
}
