package shake

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
)

// PlanVersion is the version of plan.json.
const PlanVersion = 1

// Plan is one funding plan turned into batches: the batch configuration
// that tickets reference by batch id (merchant, payment order, account,
// amounts), the slots, and the key split. It is written as plan.json next
// to the ticket files; it holds no secret. Immutable once built; safe for
// concurrent use.
type Plan struct {
	Version    int        `json:"version"`
	Budget     string     `json:"budget"`
	Name       string     `json:"plan"`
	GenID      string     `json:"generation_id"` // hex; set by Seal
	Tag        uint32     `json:"tag"`           // 28-bit tag inside every ticket; set by Seal
	RecordSize int        `json:"record_size"`
	KeyLimit   Money      `json:"key_limit_fen"`
	KeyStep    Money      `json:"key_step_fen"` // key id = global amount offset / key_step
	Keys       int        `json:"keys"`         // key ids 0..keys-1 are used
	Packets    uint64     `json:"packets"`
	Amount     Money      `json:"amount_fen"`
	Merchants  []Merchant `json:"merchants"`
	Slots      []Slot     `json:"slots"`
	Batches    []Batch    `json:"batches"`
}

// Slot is one time slot of a plan; its batches are contiguous.
type Slot struct {
	ID         uint32 `json:"id"`
	Start      string `json:"start,omitempty"`
	End        string `json:"end,omitempty"`
	FirstBatch int    `json:"first_batch"`
	Batches    int    `json:"batches"`
	Packets    uint64 `json:"packets"`
	Amount     Money  `json:"amount_fen"`
}

// Batch is the money of one merchant for one kind in one slot. Its packets
// have the ids FirstPacket … FirstPacket+Count-1; Offset is the sum of all
// earlier batches' amounts (it places the batch on the key axis).
type Batch struct {
	ID          uint32 `json:"id"`
	Slot        uint32 `json:"slot"`
	Kind        string `json:"kind"`
	Merchant    int    `json:"merchant"` // index into Plan.Merchants
	Amount      Money  `json:"amount_fen"`
	Count       uint64 `json:"count"`
	Min         Money  `json:"min_fen"`
	Max         Money  `json:"max_fen"`
	FirstPacket uint64 `json:"first_packet"`
	Offset      Money  `json:"offset_fen"`
}

// BuildPlan turns the named plan of a validated budget into batches. Per
// kind, each merchant's funding is spread over the slots in proportion to
// the slots' amounts, rounded so that both every merchant's total and every
// cell's total are exact to the fen; each cell's count is shared among its
// merchants in proportion to their amounts, within the per-packet bounds.
func BuildPlan(b *Budget, name string) (*Plan, error) {
	var spec *PlanSpec
	for i := range b.Plans {
		if b.Plans[i].Name == name {
			spec = &b.Plans[i]
		}
	}
	if spec == nil {
		names := make([]string, len(b.Plans))
		for i, p := range b.Plans {
			names[i] = p.Name
		}
		return nil, fmt.Errorf("budget %q has no plan %q (plans: %v)", b.Name, name, names)
	}
	p := &Plan{Version: PlanVersion, Budget: b.Name, Name: spec.Name, RecordSize: RecordSize,
		KeyLimit: b.KeyLimit, Merchants: b.Merchants}
	// share[k][m][j]: money of merchant m in slot j for kind k.
	share := make([][][]Money, len(b.Kinds))
	for ki, k := range b.Kinds {
		f := make([]Money, len(b.Merchants))
		for mi, m := range b.Merchants {
			f[mi] = spec.Funding[m.ID][k.Name]
		}
		c := make([]Money, len(spec.Slots))
		for j, s := range spec.Slots {
			c[j] = s.Cells[k.Name].Amount
		}
		share[ki] = matrixRound(f, c)
	}
	for j, s := range spec.Slots {
		slot := Slot{ID: s.ID, Start: s.Start, End: s.End, FirstBatch: len(p.Batches)}
		for ki, k := range b.Kinds {
			cell, ok := s.Cells[k.Name]
			if !ok {
				continue
			}
			bd := b.kindBounds(k)
			var amts []Money
			var who []int
			for mi := range b.Merchants {
				if a := share[ki][mi][j]; a > 0 {
					amts = append(amts, a)
					who = append(who, mi)
				}
			}
			counts, err := splitCount(cell.Count, amts, bd)
			if err != nil {
				return nil, fmt.Errorf("plan %q slot %d kind %s: %v", spec.Name, s.ID, k.Name, err)
			}
			for i, a := range amts {
				p.Batches = append(p.Batches, Batch{ID: uint32(len(p.Batches)), Slot: s.ID, Kind: k.Name,
					Merchant: who[i], Amount: a, Count: counts[i], Min: bd.Min, Max: bd.Max,
					FirstPacket: p.Packets, Offset: p.Amount})
				p.Packets += counts[i]
				p.Amount += a
				slot.Packets += counts[i]
				slot.Amount += a
			}
		}
		slot.Batches = len(p.Batches) - slot.FirstBatch
		p.Slots = append(p.Slots, slot)
	}
	if len(p.Batches) > MaxBatches {
		return nil, fmt.Errorf("plan %q: %d batches exceed the ticket's %d", spec.Name, len(p.Batches), MaxBatches)
	}
	maxPacket := Money(0)
	for _, bt := range p.Batches {
		maxPacket = max(maxPacket, bt.Max)
	}
	// A key covers the packets whose start lies in a window of KeyStep on
	// the global amount axis; the last may overhang by at most one packet,
	// so no key encrypts more than KeyStep+maxPacket = KeyLimit.
	p.KeyStep = p.KeyLimit - maxPacket
	p.Keys = int((p.Amount-1)/p.KeyStep) + 1
	if p.Keys > MaxKeys {
		return nil, fmt.Errorf("plan %q: %s needs %d keys at key_limit %s, more than the ticket's %d; raise key_limit",
			spec.Name, p.Amount, p.Keys, p.KeyLimit, MaxKeys)
	}
	return p, nil
}

// matrixRound spreads each row total f[m] over columns in proportion to the
// column totals c[j] (Σf = Σc), with exact integer row and column sums:
// floor every ideal share, then hand out the leftover fen along a
// north-west-corner walk, so no entry moves by more than a few fen.
func matrixRound(f, c []Money) [][]Money {
	total := Money(0)
	for _, v := range c {
		total += v
	}
	a := make([][]Money, len(f))
	rowLeft := make([]Money, len(f))
	colLeft := append([]Money(nil), c...)
	for m := range f {
		a[m] = make([]Money, len(c))
		rowLeft[m] = f[m]
		if total == 0 {
			continue
		}
		for j := range c {
			v := Money(mulDiv(uint64(f[m]), uint64(c[j]), uint64(total)))
			a[m][j] = v
			rowLeft[m] -= v
			colLeft[j] -= v
		}
	}
	m, j := 0, 0
	for m < len(f) && j < len(c) {
		t := min(rowLeft[m], colLeft[j])
		a[m][j] += t
		rowLeft[m] -= t
		colLeft[j] -= t
		if rowLeft[m] == 0 {
			m++
		}
		if j < len(c) && colLeft[j] == 0 {
			j++
		}
	}
	return a
}

// splitCount shares n packets among amounts in proportion, keeping each
// batch feasible: ceil(a/max) ≤ count ≤ floor(a/min).
func splitCount(n uint64, amts []Money, bd Bounds) ([]uint64, error) {
	total := Money(0)
	for _, a := range amts {
		total += a
	}
	counts := make([]uint64, len(amts))
	lo := make([]uint64, len(amts))
	hi := make([]uint64, len(amts))
	type rem struct {
		i int
		r uint64
	}
	rems := make([]rem, len(amts))
	sum := uint64(0)
	for i, a := range amts {
		hiP, loP := bits.Mul64(n, uint64(a))
		q, r := bits.Div64(hiP, loP, uint64(total))
		counts[i] = q
		rems[i] = rem{i, r}
		sum += q
		lo[i] = uint64((a + bd.Max - 1) / bd.Max)
		hi[i] = uint64(a / bd.Min)
		if lo[i] > hi[i] {
			return nil, fmt.Errorf("merchant share %s cannot be split into packets within [%s, %s]", a, bd.Min, bd.Max)
		}
	}
	sort.SliceStable(rems, func(x, y int) bool { return rems[x].r > rems[y].r })
	for k := 0; sum < n; k++ {
		counts[rems[k%len(rems)].i]++
		sum++
	}
	for i := range counts {
		c := min(max(counts[i], lo[i]), hi[i])
		sum = sum - counts[i] + c
		counts[i] = c
	}
	for i := range counts {
		switch {
		case sum < n:
			d := min(n-sum, hi[i]-counts[i])
			counts[i] += d
			sum += d
		case sum > n:
			d := min(sum-n, counts[i]-lo[i])
			counts[i] -= d
			sum -= d
		}
	}
	if sum != n {
		return nil, fmt.Errorf("cannot share %d packets among merchant shares %v within [%s, %s]; change the count or the bounds",
			n, amts, bd.Min, bd.Max)
	}
	return counts, nil
}

// mulDiv returns floor(a*b/c) without overflow; it needs a*b/c < 2^64.
func mulDiv(a, b, c uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	q, _ := bits.Div64(hi, lo, c)
	return q
}

// Seal fixes the generation id and derives the plan tag from it and the
// batch table, so that tickets of one generation never verify against the
// batch configuration of another (or of an edited plan.json).
func (p *Plan) Seal(genID [16]byte) {
	p.GenID = hex.EncodeToString(genID[:])
	p.Tag = p.computeTag()
}

func (p *Plan) computeTag() uint32 {
	q := *p
	q.Tag = 0
	data, _ := json.Marshal(&q) // cannot fail: plain data
	sum := sha256.Sum256(data)
	return binary.LittleEndian.Uint32(sum[:]) & tagMask
}

// SlotIndex returns the index of slot id in p.Slots, or -1.
func (p *Plan) SlotIndex(id uint32) int {
	for i, s := range p.Slots {
		if s.ID == id {
			return i
		}
	}
	return -1
}

// BatchOfPacket returns the batch holding packet id pid, or -1.
func (p *Plan) BatchOfPacket(pid uint64) int {
	i := sort.Search(len(p.Batches), func(i int) bool { return p.Batches[i].FirstPacket > pid }) - 1
	if i < 0 || pid >= p.Batches[i].FirstPacket+p.Batches[i].Count {
		return -1
	}
	return i
}

// WritePlan writes plan.json into dir.
func (p *Plan) WritePlan(dir string) error {
	data, err := json.MarshalIndent(p, "", " ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, PlanFile), append(data, '\n'), 0o600) // merchant accounts: owner only
}

// PlanFile is the name of the batch configuration next to the ticket files.
const PlanFile = "plan.json"

// LoadPlan reads plan.json from dir (or a path to the file) and checks that
// it is sealed and unaltered.
func LoadPlan(path string) (*Plan, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, PlanFile)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p Plan
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if p.Version != PlanVersion || p.RecordSize != RecordSize {
		return nil, fmt.Errorf("%s: version %d record size %d, want %d and %d", path, p.Version, p.RecordSize, PlanVersion, RecordSize)
	}
	if p.GenID == "" || p.computeTag() != p.Tag {
		return nil, fmt.Errorf("%s: plan tag does not match its contents (edited or unsealed)", path)
	}
	if err := p.check(); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &p, nil
}

// check verifies the plan's internal consistency (ids dense, ranges
// contiguous, sums), so later code may index without bounds surprises.
func (p *Plan) check() error {
	var pkt uint64
	var amt Money
	for i, b := range p.Batches {
		if b.ID != uint32(i) || b.FirstPacket != pkt || b.Offset != amt || b.Merchant < 0 || b.Merchant >= len(p.Merchants) ||
			b.Min < 1 || b.Max < b.Min || b.Max > MaxPacketAmount || b.Count == 0 {
			return fmt.Errorf("batch %d inconsistent", i)
		}
		pkt += b.Count
		amt += b.Amount
	}
	if pkt != p.Packets || amt != p.Amount || len(p.Batches) > MaxBatches || p.Keys > MaxKeys || p.KeyStep <= 0 {
		return fmt.Errorf("totals inconsistent")
	}
	next := 0
	for _, s := range p.Slots {
		if s.FirstBatch != next {
			return fmt.Errorf("slot %d batches not contiguous", s.ID)
		}
		next += s.Batches
	}
	if next != len(p.Batches) {
		return fmt.Errorf("slots do not cover the batches")
	}
	return nil
}

// writeFileAtomic replaces path durably (writeFileDurable).
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeFileDurable(path, data, mode)
}

// writeFileDurable replaces path with data so that after a crash the file
// is either the old or the new content, and the new one once this returns:
// a temporary file created with mode (never wider, whatever umask or an
// old leftover says), written and fsync'd, renamed over path, and then the
// directory fsync'd so the rename itself is on disk.
func writeFileDurable(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	_ = os.Remove(tmp) // a leftover may carry a wider mode
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err = f.Chmod(mode); err == nil {
		if _, err = f.Write(data); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir fsyncs a directory, making renames and creations in it durable.
// A variable so tests can see it called.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
