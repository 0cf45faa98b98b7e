package shake

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// Progress receives counts of records done; nil means no reporting.
type Progress interface{ Add(n int64) }

// GenOptions tune Generate. Zero values pick defaults.
type GenOptions struct {
	// Seed makes the run reproducible: the same seed, plan and keys give
	// byte-identical files whatever Workers is. Nil draws a fresh seed from
	// crypto/rand that is not stored anywhere.
	Seed []byte
	// Workers generating chunks in parallel (default GOMAXPROCS).
	Workers int
	// Chunk is the number of records shuffled together (default 1<<17).
	Chunk    int
	Progress Progress
}

// SlotSink receives the generated records, one slot after the other.
type SlotSink interface {
	Create(s Slot) (SlotWriter, error)
}

// SlotWriter takes one slot's records in order, then its header.
type SlotWriter interface {
	Write(p []byte) error
	Finish(h Header) error
	Abort()
}

// Generate seals plan with a new generation id and produces every slot's
// records into sink, in slot order.
//
// Each slot is cut into chunks of about opts.Chunk records. Every batch of
// the slot puts the same fraction of its packets and of its money into
// every chunk (exact integer shares), so each merchant is spread evenly
// over the whole slot; inside a chunk the packets are drawn, shuffled
// (Fisher–Yates) and encrypted. A chunk depends only on the seed, the slot
// and its index, so chunks are generated in parallel and written in order:
// O(n) time, memory bounded by a few chunks per worker.
//
// Amounts: a batch of n packets and amount A in [min,max] is n×min plus
// A−n×min extra fen shared out one packet at a time, each draw uniform on
// a window centred on the mean of what is left (WeChat's "double the
// mean"), clipped so the rest stays feasible; the last packet takes the
// remainder, so every batch sums exactly.
func Generate(plan *Plan, keys *KeyStore, opts GenOptions, sink SlotSink) error {
	for id := 0; id < plan.Keys; id++ {
		if !keys.Has(uint16(id)) {
			return fmt.Errorf("plan needs key ids 0..%d but the key store lacks %d (create a store with at least %d keys)", plan.Keys-1, id, plan.Keys)
		}
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Chunk <= 0 {
		opts.Chunk = 1 << 17
	}
	var master [32]byte
	var genID [16]byte
	if opts.Seed != nil {
		master = sha256.Sum256(append([]byte("longlink/shake/seed\x00"), opts.Seed...))
		id := sha256.Sum256(append([]byte("longlink/shake/genid\x00"), master[:]...))
		copy(genID[:], id[:])
	} else {
		if _, err := rand.Read(master[:]); err != nil {
			return err
		}
		if _, err := rand.Read(genID[:]); err != nil {
			return err
		}
	}
	plan.Seal(genID)

	maxBatches := 0
	for _, s := range plan.Slots {
		maxBatches = max(maxBatches, s.Batches)
	}
	g := &generator{plan: plan, keys: keys, master: master, chunk: opts.Chunk}
	nbuf := 2*opts.Workers + 2
	free := make(chan *chunkBuf, nbuf)
	for i := 0; i < nbuf; i++ {
		free <- &chunkBuf{pt: make([][2]uint64, 0, opts.Chunk+maxBatches+1)}
	}
	work := make(chan *genJob, nbuf)
	order := make(chan *genJob, nbuf)
	stop := make(chan struct{})
	go func() { // dispatcher: jobs in file order
		defer close(work)
		defer close(order)
		for si := range plan.Slots {
			nc := g.chunks(si)
			for c := 0; c < nc; c++ {
				var buf *chunkBuf
				select {
				case buf = <-free:
				case <-stop:
					return
				}
				j := &genJob{slot: si, c: c, nc: nc, buf: buf, done: make(chan struct{})}
				order <- j
				work <- j
			}
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < opts.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var scratch [16]byte
			for j := range work {
				g.fill(j, &scratch)
				close(j.done)
			}
		}()
	}

	var (
		err  error
		w    SlotWriter
		cur  = -1
		crc  uint32
		recs uint64
	)
	finish := func() {
		if w == nil {
			return
		}
		if err == nil {
			s := plan.Slots[cur]
			if recs != s.Packets {
				err = fmt.Errorf("slot %d: generated %d records, plan says %d", s.ID, recs, s.Packets)
			} else {
				err = w.Finish(Header{Tag: plan.Tag, Slot: s.ID, Parts: 1, Instance: NoInstance, Backup: NoInstance,
					RecordCRC: crc, Count: recs})
			}
		}
		if err != nil {
			w.Abort()
		}
		w = nil
	}
	for j := range order {
		<-j.done
		if err == nil && j.slot != cur {
			finish()
			cur, crc, recs = j.slot, 0, 0
			if err == nil {
				w, err = sink.Create(plan.Slots[cur])
			}
		}
		if err == nil {
			out := j.buf.out[:len(j.buf.pt)*RecordSize]
			crc = crc32.Update(crc, castagnoli, out)
			recs += uint64(len(j.buf.pt))
			err = w.Write(out)
			if opts.Progress != nil {
				opts.Progress.Add(int64(len(j.buf.pt)))
			}
		}
		if err != nil {
			select {
			case <-stop:
			default:
				close(stop)
			}
		}
		free <- j.buf
	}
	finish()
	wg.Wait()
	return err
}

type generator struct {
	plan   *Plan
	keys   *KeyStore
	master [32]byte
	chunk  int
}

type chunkBuf struct {
	pt  [][2]uint64 // plaintext words of the chunk's tickets
	out []byte      // encrypted records
}

type genJob struct {
	slot, c, nc int
	buf         *chunkBuf
	done        chan struct{}
}

// chunks returns how many chunks slot si is cut into.
func (g *generator) chunks(si int) int {
	n := g.plan.Slots[si].Packets
	return int((n + uint64(g.chunk) - 1) / uint64(g.chunk))
}

// fill generates chunk j.c of slot j.slot into j.buf.
func (g *generator) fill(j *genJob, scratch *[16]byte) {
	p := g.plan
	s := &p.Slots[j.slot]
	var seed [32]byte
	{
		h := sha256.New()
		h.Write(g.master[:])
		var b [12]byte
		binary.LittleEndian.PutUint32(b[:4], s.ID)
		binary.LittleEndian.PutUint64(b[4:], uint64(j.c))
		h.Write(b[:])
		h.Sum(seed[:0])
	}
	rng := mrand.NewChaCha8(seed)
	pt := j.buf.pt[:0]
	step := uint64(p.KeyStep)
	c, nc := uint64(j.c), uint64(j.nc)
	for bi := s.FirstBatch; bi < s.FirstBatch+s.Batches; bi++ {
		b := &p.Batches[bi]
		q0 := mulDiv(b.Count, c, nc)
		q1 := mulDiv(b.Count, c+1, nc)
		if q1 == q0 {
			continue
		}
		minA, width := uint64(b.Min), uint64(b.Max-b.Min)
		extra := uint64(b.Amount) - b.Count*minA
		e0 := mulDiv(extra, q0, b.Count)
		rem := mulDiv(extra, q1, b.Count) - e0
		prefix := uint64(b.Offset) + q0*minA + e0
		pid := b.FirstPacket + q0
		kid := prefix / step
		nextKey := (kid + 1) * step
		hiBase := uint64(b.ID) | uint64(p.Tag)<<(batchBits+kidBits)
		for r := q1 - q0; r > 0; r-- {
			x := drawExtra(rng, rem, r, width)
			rem -= x
			amt := minA + x
			if prefix >= nextKey {
				kid = prefix / step
				nextKey = (kid + 1) * step
			}
			pt = append(pt, [2]uint64{pid | amt<<pidBits, hiBase | kid<<batchBits})
			prefix += amt
			pid++
		}
	}
	// Fisher–Yates; the multiply-shift maps 64 random bits onto [0, i]
	// with a bias below 2^-40 for any chunk size used here.
	for i := len(pt) - 1; i > 0; i-- {
		k, _ := bits.Mul64(rng.Uint64(), uint64(i+1))
		pt[i], pt[k] = pt[k], pt[i]
	}
	need := len(pt) * RecordSize
	if cap(j.buf.out) < need {
		j.buf.out = make([]byte, need)
	}
	out := j.buf.out[:need]
	for i, w := range pt {
		kid := uint16(w[1] >> batchBits)
		sealRecord(out[i*RecordSize:], scratch, g.keys.block(kid), kid, w[0], w[1])
	}
	j.buf.pt = pt
}

// drawExtra draws the extra fen (above min) of one packet when rem extra
// fen remain for r packets, each at most width: uniform on a window
// centred on rem/r of half-width min(rem/r, width-rem/r). The window keeps
// 0 ≤ rem' ≤ (r-1)·width, so the draws never get stuck, and its centre
// keeps every packet's expected amount at the batch mean.
func drawExtra(rng *mrand.ChaCha8, rem, r, width uint64) uint64 {
	if r == 1 {
		return rem
	}
	var lo, hi uint64
	if twoRem := 2 * rem; twoRem <= r*width {
		lo, hi = 0, twoRem/r
	} else {
		lo, hi = (twoRem+r-1)/r-width, width
	}
	k, _ := bits.Mul64(rng.Uint64(), hi-lo+1)
	return lo + k
}

// SlotFileName is the name of a whole-slot ticket file.
func SlotFileName(slot uint32) string { return fmt.Sprintf("slot-%06d.llt", slot) }

// DirSink writes each slot to Dir/slot-NNNNNN.llt: records streamed in
// large writes after a placeholder header, the header written last, then
// fsync and an atomic rename, so a file that exists is complete.
type DirSink struct{ Dir string }

// Create implements SlotSink.
func (d DirSink) Create(s Slot) (SlotWriter, error) {
	path := filepath.Join(d.Dir, SlotFileName(s.ID))
	f, err := os.OpenFile(path+".tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(make([]byte, HeaderSize)); err != nil {
		f.Close()
		return nil, err
	}
	return &fileWriter{f: f, path: path}, nil
}

type fileWriter struct {
	f    *os.File
	path string
}

func (w *fileWriter) Write(p []byte) error {
	_, err := w.f.Write(p)
	return err
}

func (w *fileWriter) Finish(h Header) error {
	if _, err := w.f.WriteAt(h.Marshal(), 0); err != nil {
		w.Abort()
		return err
	}
	if err := w.f.Sync(); err != nil {
		w.Abort()
		return err
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.f.Name())
		return err
	}
	return os.Rename(w.path+".tmp", w.path)
}

func (w *fileWriter) Abort() {
	w.f.Close()
	os.Remove(w.path + ".tmp")
}

// DiscardSink throws records away (benchmarks of generation without disk).
type DiscardSink struct{}

// Create implements SlotSink.
func (DiscardSink) Create(Slot) (SlotWriter, error) { return discardWriter{}, nil }

type discardWriter struct{}

func (discardWriter) Write([]byte) error  { return nil }
func (discardWriter) Finish(Header) error { return nil }
func (discardWriter) Abort()              {}
