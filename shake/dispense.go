package shake

import "sync/atomic"

// Dispenser hands out the records of one mapped file in order, each at
// most once, with an atomic cursor: the gateway's shake path. Next is
// goroutine-safe and does not allocate.
type Dispenser struct {
	f    *File
	next atomic.Uint64
}

// NewDispenser starts dispensing f at record start (0, or where a previous
// run stopped, to resume).
func NewDispenser(f *File, start uint64) *Dispenser {
	d := &Dispenser{f: f}
	d.next.Store(start)
	return d
}

// Next returns the next record and its index, or ok=false when the file is
// exhausted. The record aliases the mapping (read-only, valid until the
// file is closed).
func (d *Dispenser) Next() (rec []byte, index uint64, ok bool) {
	i := d.next.Add(1) - 1
	if i >= d.f.Count {
		return nil, i, false
	}
	return d.f.Record(int(i)), i, true
}

// Taken returns how many records were handed out (capped at the count).
func (d *Dispenser) Taken() uint64 { return min(d.next.Load(), d.f.Count) }
