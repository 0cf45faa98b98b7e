package shake

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"
)

// ReconcileOptions tune Reconcile.
type ReconcileOptions struct {
	Workers     int
	Progress    Progress
	MaxProblems int // listed in full (default 20); all are counted
	// ShardPackets bounds memory: packet ids are reconciled in ranges of
	// this many (4 bytes + 1 bit each), one pass over ledger and files per
	// range. Default 256M (about 1 GiB).
	ShardPackets uint64
	// SealKeys, if set, makes Reconcile check the user too: every ledger
	// line must carry uid and sealed (the claim's proof); the sealed ticket
	// must authenticate, be bound to that uid, and hold that packet and
	// amount. Without it only packets and amounts are checked.
	SealKeys *SealKeys
}

// MerchantRecon is one merchant's side of a reconciliation.
type MerchantRecon struct {
	Planned  Totals `json:"planned"`
	Opened   Totals `json:"opened"`   // opened packets that exist, at their generated amounts
	Unopened Totals `json:"unopened"` // planned minus opened: money to return
}

// ReconcileReport is the outcome of Reconcile.
type ReconcileReport struct {
	LedgerEntries  uint64
	Opened         Totals // ledger entries matched to a generated packet
	NotGenerated   uint64 // opened packets absent from the files: never pay
	AmountMismatch uint64 // opened with an amount other than generated
	OpenedTwice    uint64 // a packet id more than once in the ledger
	UserMismatch   uint64 // credited to a user other than the one its sealed ticket names (SealKeys)
	Unproven       uint64 // no proof, or a proof that fails or names another packet or amount (SealKeys)
	UsersChecked   bool   // SealKeys was given
	FileProblems   uint64 // records that fail verification or repeat
	Passes         int
	Merchants      []MerchantRecon
	Problems       []string
}

// OK reports a clean reconciliation.
func (r *ReconcileReport) OK() bool {
	return r.NotGenerated+r.AmountMismatch+r.OpenedTwice+r.FileProblems+r.UserMismatch+r.Unproven == 0
}

type reconWorker struct {
	opened   []Totals // by merchant
	fileBad  uint64   // records that fail verification (counted in the first pass)
	fileDup  uint64   // records repeating a packet of this pass's range
	mismatch uint64
	problems []string
}

// Reconcile checks the ledger of opened packets against the generated
// files: every opened packet exists, its amount equals the generated one,
// none is opened twice; and totals opened and unopened per merchant.
func Reconcile(plan *Plan, keys *KeyStore, files []string, ledgerPath string, opts ReconcileOptions) (*ReconcileReport, error) {
	if opts.MaxProblems <= 0 {
		opts.MaxProblems = 20
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.ShardPackets == 0 {
		opts.ShardPackets = 256 << 20
	}
	c := NewChecker(plan, keys, nil, nil)
	rep := &ReconcileReport{Merchants: make([]MerchantRecon, len(plan.Merchants)), UsersChecked: opts.SealKeys != nil}
	proofOpener := c.NewOpener()
	var scratch [SealedSize]byte
	problem := func(format string, a ...any) {
		if len(rep.Problems) < opts.MaxProblems {
			rep.Problems = append(rep.Problems, fmt.Sprintf(format, a...))
		}
	}
	for _, b := range plan.Batches {
		m := &rep.Merchants[b.Merchant]
		m.Planned.Count += b.Count
		m.Planned.Amount += b.Amount
	}
	total := max(plan.Packets, 1)
	for lo := uint64(0); lo < total; lo += opts.ShardPackets {
		hi := min(lo+opts.ShardPackets, total)
		rep.Passes++
		first := lo == 0
		amounts := make([]uint32, hi-lo) // ledger amount by packet id - lo; 0 = not opened
		// Pass 1: the ledger.
		f, err := os.Open(ledgerPath)
		if err != nil {
			return nil, err
		}
		lr, err := NewLedgerReader(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", ledgerPath, err)
		}
		for {
			e, err := lr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: %w", ledgerPath, err)
			}
			if first {
				rep.LedgerEntries++
				if opts.SealKeys != nil {
					checkProof(rep, opts.SealKeys, proofOpener, scratch[:], &e, problem)
				}
			}
			if e.PacketID >= plan.Packets {
				if first {
					rep.NotGenerated++
					problem("ledger line %d: packet %d was never generated (plan has %d)", e.Line, e.PacketID, plan.Packets)
				}
				continue
			}
			if e.PacketID < lo || e.PacketID >= hi {
				continue
			}
			if amounts[e.PacketID-lo] != 0 {
				rep.OpenedTwice++
				problem("ledger line %d: packet %d opened again", e.Line, e.PacketID)
				continue
			}
			amounts[e.PacketID-lo] = uint32(e.Amount)
		}
		f.Close()
		// Pass 2: the files.
		seen := make([]uint64, (hi-lo+63)/64)
		ws := make([]*reconWorker, opts.Workers)
		for i := range ws {
			ws[i] = &reconWorker{opened: make([]Totals, len(plan.Merchants))}
		}
		var progress Progress
		if first {
			progress = opts.Progress
		}
		fn := func(w int, t Ticket, err error, rec []byte, f *File, i int) {
			st := ws[w]
			if err != nil {
				st.fileBad++
				if first && len(st.problems) < opts.MaxProblems {
					st.problems = append(st.problems, fmt.Sprintf("%s record %d: %v", f.Path, i, err))
				}
				return
			}
			if t.PacketID < lo || t.PacketID >= hi {
				return
			}
			k := t.PacketID - lo
			bit := uint64(1) << (k & 63)
			if atomic.OrUint64(&seen[k>>6], bit)&bit != 0 {
				st.fileDup++
				if len(st.problems) < opts.MaxProblems {
					st.problems = append(st.problems, fmt.Sprintf("%s record %d: packet %d repeated in the files", f.Path, i, t.PacketID))
				}
				return
			}
			a := amounts[k]
			if a == 0 {
				return
			}
			if Money(a) != t.Amount {
				st.mismatch++
				if len(st.problems) < opts.MaxProblems {
					st.problems = append(st.problems, fmt.Sprintf("packet %d opened for %s, generated for %s", t.PacketID, Money(a), t.Amount))
				}
			}
			m := &st.opened[plan.Batches[t.Batch].Merchant]
			m.Count++
			m.Amount += t.Amount
		}
		if err := scanFiles(c, files, opts.Workers, progress, nil, fn); err != nil {
			return nil, err
		}
		for _, st := range ws {
			if first {
				rep.FileProblems += st.fileBad
			}
			rep.FileProblems += st.fileDup
			rep.AmountMismatch += st.mismatch
			for m, t := range st.opened {
				rep.Merchants[m].Opened.Count += t.Count
				rep.Merchants[m].Opened.Amount += t.Amount
			}
			for _, p := range st.problems {
				problem("%s", p)
			}
		}
		for k, a := range amounts {
			if a != 0 && seen[k>>6]&(1<<(k&63)) == 0 {
				rep.NotGenerated++
				problem("packet %d opened but absent from the files", lo+uint64(k))
			}
		}
	}
	for i := range rep.Merchants {
		m := &rep.Merchants[i]
		rep.Opened.Count += m.Opened.Count
		rep.Opened.Amount += m.Opened.Amount
		m.Unopened = Totals{Count: m.Planned.Count - m.Opened.Count, Amount: m.Planned.Amount - m.Opened.Amount}
	}
	return rep, nil
}

// checkProof re-verifies one ledger line's proof: the sealed ticket
// authenticates, names the line's user, and its record the line's packet
// and amount.
func checkProof(rep *ReconcileReport, sk *SealKeys, o *Opener, scratch []byte, e *LedgerEntry, problem func(string, ...any)) {
	if !e.HasSealed || !e.HasUID {
		rep.Unproven++
		problem("ledger line %d: packet %d has no uid or sealed ticket to prove who opened it", e.Line, e.PacketID)
		return
	}
	u, err := sk.Unseal(e.Sealed[:], scratch)
	if err != nil {
		rep.Unproven++
		problem("ledger line %d: packet %d: sealed ticket fails authentication", e.Line, e.PacketID)
		return
	}
	t, err := o.Open(u.Record[:])
	if err != nil || t.PacketID != e.PacketID || t.Amount != e.Amount {
		rep.Unproven++
		problem("ledger line %d: packet %d / %s: the sealed ticket holds another packet or amount", e.Line, e.PacketID, e.Amount)
		return
	}
	if u.UID != e.UID {
		rep.UserMismatch++
		problem("ledger line %d: packet %d credited to uid %d, but dispensed to uid %d", e.Line, e.PacketID, e.UID, u.UID)
	}
}

// Print writes a human-readable summary of the report.
func (r *ReconcileReport) Print(w io.Writer, plan *Plan) {
	fmt.Fprintf(w, "ledger entries %d, matched %d packets / %s, passes %d\n", r.LedgerEntries, r.Opened.Count, r.Opened.Amount, r.Passes)
	fmt.Fprintf(w, "  %-12s %12s %16s %12s %16s %12s %16s\n", "merchant", "planned", "", "opened", "", "unopened", "to return")
	for i, m := range r.Merchants {
		fmt.Fprintf(w, "  %-12s %12d %16s %12d %16s %12d %16s\n", plan.Merchants[i].ID,
			m.Planned.Count, m.Planned.Amount, m.Opened.Count, m.Opened.Amount, m.Unopened.Count, m.Unopened.Amount)
	}
	fmt.Fprintf(w, "failures: not generated %d, amount mismatch %d, opened twice %d, bad records in files %d, user mismatch %d, unproven %d\n",
		r.NotGenerated, r.AmountMismatch, r.OpenedTwice, r.FileProblems, r.UserMismatch, r.Unproven)
	if !r.UsersChecked {
		fmt.Fprintln(w, "WARNING: users not checked (no seal keys given)")
	}
	for _, p := range r.Problems {
		fmt.Fprintln(w, "  ", p)
	}
	if r.OK() {
		fmt.Fprintln(w, "OK")
	} else {
		fmt.Fprintln(w, "FAILED")
	}
}
