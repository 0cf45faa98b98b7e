package shake

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Issuer is the gateway's side of shaking: it serves this instance's ticket
// files slot by slot and hands out one sealed ticket per successful shake,
// with quotas, pacing and degrade hints. Shake runs on the event loops: it
// is goroutine-safe, does no I/O and no allocation (a token from an atomic
// bucket, an atomic cursor into the mapped files, one GCM seal). Everything
// else — opening the next slot's files, refilling the bucket by the pacing
// curve and the per-second limit, the cursor journal, measuring the shake
// rate — happens on one background goroutine every Tick.
//
// Pacing: at each tick the bucket gets speed × remaining/remaining-time ×
// elapsed tokens (remaining = tickets of the slot not yet handed out), at
// most Limit × elapsed, and holds at most two ticks' worth. So a slot's
// tickets are spread over the slot, a quiet period is caught up later, an
// operator's speed factor (SetSpeed) finishes sooner or later, and this
// instance never issues more than its per-second limit (the capacity of the
// opening path) plus one tick's burst.
//
// Restarts: before tokens beyond the journal's mark are granted, the mark is
// advanced and fsynced (a hi-lo reservation); a restarted instance resumes
// the slot at the mark, so no ticket is handed out twice (at most one
// reservation step is skipped: unopened, it comes back in reconciliation).
//
// Failover (file level, as in the spec): instances marked down (SetDown,
// IssuerConfig.Down) lose their current slot's part; at the next slot
// boundary the instance holding a down instance's backup copy serves it
// too.
type Issuer struct {
	cfg    IssuerConfig
	plan   *Plan
	split  *SplitManifest // nil: whole-slot files, one instance
	sealer *Sealer
	log    *slog.Logger

	cur    atomic.Pointer[issueSlot]
	hint   atomic.Pointer[ShakeHint]
	nowSec atomic.Uint32

	shakes, issued atomic.Uint64

	mu        sync.Mutex // guards the fields below and the operator settings
	down      map[int]bool
	speed     float64
	limit     float64
	degrade   *ShakeHint // operator override; nil: automatic
	shakeRate float64
	retry     time.Duration

	stop chan struct{}
	done chan struct{}
}

// IssuerConfig configures an Issuer.
type IssuerConfig struct {
	Dir      string // a split directory (split.json) or a gen output directory (whole slot files)
	Instance int    // this instance's number in the split (0 with a gen directory)
	StateDir string // cursor journal (required: resuming must never hand a ticket out twice)

	// Slot times: slot i runs [Start + i×SlotLen, Start + (i+1)×SlotLen).
	// With Start zero, the plan's slot start/end times (RFC 3339) are used.
	Start   time.Time
	SlotLen time.Duration

	Limit float64 // tickets per second this instance may issue (0: no limit)
	Speed float64 // pacing factor (default 1)
	Down  []int   // instances already down at start

	ShakeCapacity float64       // shakes/s this instance serves comfortably; above it replies ask clients to back off (0: no automatic degrade)
	RetryAfter    time.Duration // hint after "no packet this time" (default 1s)
	Tick          time.Duration // refill period (default 10ms)

	Logger *slog.Logger
	Clock  func() time.Time // default time.Now (tests)
}

// ShakeHint is what every SHAKE reply tells the client about shaking again.
type ShakeHint struct {
	RetryAfterMS  uint32 `json:"retry_after_ms"`       // after "no packet": wait at least this long
	MinIntervalMS uint32 `json:"min_interval_ms"`      // degrade: never shake more often than this (0: no limit)
	ProbPermille  uint32 `json:"probability_permille"` // degrade: send a shake only with this probability (1000 or 0: always)
}

// ShakeResult is the outcome of one shake.
type ShakeResult uint8

// Shake outcomes (the ShakeRsp result field).
const (
	ShakeTicket ShakeResult = 0 // a sealed ticket
	ShakeNone   ShakeResult = 1 // no packet this time
	ShakeIdle   ShakeResult = 2 // no slot is running now on this instance
	ShakeEnded  ShakeResult = 3 // the event is over
)

// issueSlot is the slot being served: its files, as one sequence.
type issueSlot struct {
	index  int
	slot   uint32
	start  time.Time
	end    time.Time
	files  []*File
	firsts []uint64 // sequence index of each file's first record
	total  uint64

	tokens atomic.Int64
	cursor atomic.Uint64

	mark    atomic.Uint64 // journal mark (written by the refill goroutine only)
	journal string
	frac    float64 // fractional tokens carried (refill goroutine only)
}

func (st *issueSlot) record(g uint64) []byte {
	i := len(st.firsts) - 1
	for i > 0 && g < st.firsts[i] {
		i--
	}
	return st.files[i].Record(int(g - st.firsts[i]))
}

func (st *issueSlot) taken() uint64 { return min(st.cursor.Load(), st.total) }

func (st *issueSlot) close() {
	for _, f := range st.files {
		f.Close()
	}
}

// NewIssuer loads the plan (and split manifest) from cfg.Dir. Call Start
// to begin serving.
func NewIssuer(cfg IssuerConfig, sealer *Sealer) (*Issuer, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("shake issuer: a state directory for the cursor journal is required")
	}
	if cfg.Speed <= 0 {
		cfg.Speed = 1
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 10 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	plan, err := LoadPlan(cfg.Dir)
	if err != nil {
		return nil, err
	}
	is := &Issuer{cfg: cfg, plan: plan, sealer: sealer, log: cfg.Logger, down: map[int]bool{},
		speed: cfg.Speed, limit: cfg.Limit, retry: cfg.RetryAfter}
	for _, d := range cfg.Down {
		is.down[d] = true
	}
	if data, err := os.ReadFile(filepath.Join(cfg.Dir, SplitFile)); err == nil {
		var m SplitManifest
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("%s: %v", SplitFile, err)
		}
		if m.Tag != plan.Tag {
			return nil, fmt.Errorf("%s: tag %#x, plan has %#x", SplitFile, m.Tag, plan.Tag)
		}
		if cfg.Instance < 0 || cfg.Instance >= m.Instances {
			return nil, fmt.Errorf("instance %d: the split has instances 0..%d", cfg.Instance, m.Instances-1)
		}
		is.split = &m
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	} else if cfg.Instance != 0 {
		return nil, fmt.Errorf("instance %d: %s holds whole slot files (no %s); only instance 0 can serve them", cfg.Instance, cfg.Dir, SplitFile)
	}
	if cfg.Start.IsZero() {
		for _, s := range plan.Slots {
			if _, _, err := slotTimes(s); err != nil {
				return nil, fmt.Errorf("slot %d: %v (or configure a start time and slot length)", s.ID, err)
			}
		}
	} else if cfg.SlotLen <= 0 {
		return nil, errors.New("shake issuer: a slot length is needed with a start time")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, err
	}
	is.hint.Store(&ShakeHint{RetryAfterMS: uint32(cfg.RetryAfter.Milliseconds()), ProbPermille: 1000})
	return is, nil
}

func slotTimes(s Slot) (time.Time, time.Time, error) {
	a, err := time.Parse(time.RFC3339, s.Start)
	if err != nil {
		return a, a, fmt.Errorf("start %q: %v", s.Start, err)
	}
	b, err := time.Parse(time.RFC3339, s.End)
	if err != nil {
		return a, b, fmt.Errorf("end %q: %v", s.End, err)
	}
	if !b.After(a) {
		return a, b, fmt.Errorf("end %s not after start %s", s.End, s.Start)
	}
	return a, b, nil
}

// window returns slot i's time range.
func (is *Issuer) window(i int) (time.Time, time.Time) {
	if !is.cfg.Start.IsZero() {
		a := is.cfg.Start.Add(time.Duration(i) * is.cfg.SlotLen)
		return a, a.Add(is.cfg.SlotLen)
	}
	a, b, _ := slotTimes(is.plan.Slots[i])
	return a, b
}

// Plan returns the plan being served.
func (is *Issuer) Plan() *Plan { return is.plan }

// Instance returns this instance's number.
func (is *Issuer) Instance() int { return is.cfg.Instance }

// Start opens the current slot (if any) and starts the refill goroutine.
func (is *Issuer) Start() error {
	is.stop, is.done = make(chan struct{}), make(chan struct{})
	now := is.cfg.Clock()
	is.nowSec.Store(uint32(now.Unix()))
	if err := is.advance(now); err != nil {
		return err
	}
	go is.run()
	return nil
}

// Close stops the refill goroutine and unmaps the files. Shake must not be
// called any more.
func (is *Issuer) Close() {
	if is.stop != nil {
		close(is.stop)
		<-is.done
	}
	if st := is.cur.Swap(nil); st != nil {
		st.close()
	}
}

// Shake hands out the next ticket to uid if the quota allows: it appends
// the sealed ticket to dst (needs SealedSize bytes of spare capacity to
// stay allocation-free) and returns ShakeTicket; otherwise dst unchanged
// and another result. The hint goes into every reply. Goroutine-safe; no
// I/O, no allocation.
func (is *Issuer) Shake(dst []byte, uid uint64) ([]byte, ShakeResult, *ShakeHint) {
	is.shakes.Add(1)
	h := is.hint.Load()
	st := is.cur.Load()
	if st == nil {
		if is.ended() {
			return dst, ShakeEnded, h
		}
		return dst, ShakeIdle, h
	}
	if st.tokens.Load() <= 0 {
		return dst, ShakeNone, h
	}
	if st.tokens.Add(-1) < 0 {
		st.tokens.Add(1)
		return dst, ShakeNone, h
	}
	g := st.cursor.Add(1) - 1
	if g >= st.total {
		return dst, ShakeNone, h
	}
	out := is.sealer.AppendSealed(dst, st.record(g), uid, is.nowSec.Load())
	if len(out) == len(dst) { // no nonce could be reserved: the ticket stays unissued
		return dst, ShakeNone, h
	}
	is.issued.Add(1)
	return out, ShakeTicket, h
}

func (is *Issuer) ended() bool {
	_, end := is.window(len(is.plan.Slots) - 1)
	return time.Unix(int64(is.nowSec.Load()), 0).After(end)
}

// NextSlotIn returns how long until the next slot starts (0 if one is
// running or none is left).
func (is *Issuer) NextSlotIn() time.Duration {
	now := is.cfg.Clock()
	for i := range is.plan.Slots {
		a, _ := is.window(i)
		if a.After(now) {
			return a.Sub(now)
		}
	}
	return 0
}

func (is *Issuer) run() {
	defer close(is.done)
	t := time.NewTicker(is.cfg.Tick)
	defer t.Stop()
	last := is.cfg.Clock()
	lastRate, lastShakes := last, is.shakes.Load()
	for {
		select {
		case <-is.stop:
			return
		case <-t.C:
		}
		now := is.cfg.Clock()
		is.step(now, now.Sub(last))
		last = now
		if dt := now.Sub(lastRate); dt >= time.Second {
			n := is.shakes.Load()
			is.mu.Lock()
			is.shakeRate = float64(n-lastShakes) / dt.Seconds()
			is.mu.Unlock()
			lastRate, lastShakes = now, n
			is.updateHint()
		}
	}
}

// step is one tick: the clock, the slot boundary, the refill.
func (is *Issuer) step(now time.Time, dt time.Duration) {
	is.nowSec.Store(uint32(now.Unix()))
	if err := is.advance(now); err != nil {
		is.log.Error("shake: cannot open the next slot", "err", err)
	}
	if st := is.cur.Load(); st != nil {
		if err := is.refill(st, now, dt); err != nil {
			is.log.Error("shake: cursor journal", "err", err)
		}
	}
}

// advance switches to the slot running at now (or to none).
func (is *Issuer) advance(now time.Time) error {
	idx := -1
	for i := range is.plan.Slots {
		a, b := is.window(i)
		if !now.Before(a) && now.Before(b) {
			idx = i
			break
		}
	}
	old := is.cur.Load()
	if old != nil && old.index == idx {
		return nil
	}
	var st *issueSlot
	if idx >= 0 {
		var err error
		if st, err = is.openSlot(idx); err != nil {
			is.cur.Store(nil)
			if old != nil {
				time.AfterFunc(10*time.Second, old.close)
			}
			return err
		}
	}
	is.cur.Store(st)
	if old != nil {
		// A loop may still be reading a record of the old slot: unmap later.
		time.AfterFunc(10*time.Second, old.close)
	}
	if st != nil {
		is.log.Info("shake: serving slot", "slot", st.slot, "files", len(st.files), "tickets", st.total, "resume_at", st.cursor.Load())
	}
	return nil
}

type journalJSON struct {
	Slot  uint32   `json:"slot"`
	Parts []string `json:"parts"`
	Mark  uint64   `json:"mark"`
}

// partsFor lists this instance's files for slot index i (relative to Dir).
func (is *Issuer) partsFor(i int) []string {
	s := is.plan.Slots[i]
	if is.split == nil {
		return []string{SlotFileName(s.ID)}
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	var out []string
	for _, p := range is.split.Parts {
		if p.Slot != s.ID {
			continue
		}
		switch {
		case p.Primary == is.cfg.Instance && !is.down[p.Primary]:
			out = append(out, p.PrimaryPath)
		case p.Backup == is.cfg.Instance && is.down[p.Primary]:
			out = append(out, p.BackupPath)
		}
	}
	sort.Strings(out)
	return out
}

func (is *Issuer) openSlot(i int) (*issueSlot, error) {
	s := is.plan.Slots[i]
	a, b := is.window(i)
	st := &issueSlot{index: i, slot: s.ID, start: a, end: b,
		journal: filepath.Join(is.cfg.StateDir, fmt.Sprintf("slot-%06d.json", s.ID))}
	var j journalJSON
	if data, err := os.ReadFile(st.journal); err == nil {
		if err := json.Unmarshal(data, &j); err != nil {
			return nil, fmt.Errorf("%s: %v", st.journal, err)
		}
	} else if errors.Is(err, os.ErrNotExist) {
		j = journalJSON{Slot: s.ID, Parts: is.partsFor(i)}
		if err := writeJournal(st.journal, j); err != nil {
			return nil, err
		}
	} else {
		return nil, err
	}
	for _, rel := range j.Parts {
		f, err := OpenFile(filepath.Join(is.cfg.Dir, rel))
		if err != nil {
			st.close()
			return nil, err
		}
		if f.Tag != is.plan.Tag || f.Slot != s.ID {
			f.Close()
			st.close()
			return nil, fmt.Errorf("%s: tag %#x slot %d, want tag %#x slot %d", rel, f.Tag, f.Slot, is.plan.Tag, s.ID)
		}
		st.files = append(st.files, f)
		st.firsts = append(st.firsts, st.total)
		st.total += f.Count
	}
	if len(st.files) == 0 {
		st.files, st.firsts = nil, []uint64{0}
	}
	st.mark.Store(min(j.Mark, st.total))
	st.cursor.Store(st.mark.Load())
	return st, nil
}

// writeJournal replaces the journal durably: temporary file, fsync,
// rename, directory fsync (without the last, a crash could bring back the
// old journal and hand its tickets out again).
func writeJournal(path string, j journalJSON) error {
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return writeFileDurable(path, append(data, '\n'), 0o644)
}

// refill grants the tokens due for the elapsed time dt.
func (is *Issuer) refill(st *issueSlot, now time.Time, dt time.Duration) error {
	is.mu.Lock()
	speed, limit := is.speed, is.limit
	is.mu.Unlock()
	taken := st.taken()
	tokens := max(st.tokens.Load(), 0)
	remaining := int64(st.total-taken) - tokens
	if remaining <= 0 {
		return nil
	}
	left := st.end.Sub(now).Seconds()
	rate := math.Inf(1)
	if left > is.cfg.Tick.Seconds() {
		rate = speed * float64(remaining) / left
	}
	if limit > 0 {
		rate = min(rate, limit)
	}
	due := float64(remaining)
	if !math.IsInf(rate, 1) {
		due = rate*dt.Seconds() + st.frac
	}
	// Hold at most two ticks' worth (at least one ticket).
	capTokens := float64(remaining)
	if !math.IsInf(rate, 1) {
		capTokens = max(1, 2*rate*is.cfg.Tick.Seconds())
	}
	grant := math.Floor(min(due, capTokens-float64(tokens)))
	if grant <= 0 {
		st.frac = min(due, capTokens)
		return nil
	}
	st.frac = due - grant
	if st.frac > 1 {
		st.frac = 0
	}
	n := uint64(min(int64(grant), remaining))
	// Never let the cursor pass the journal's mark.
	if need := taken + uint64(tokens) + n; need > st.mark.Load() {
		step := uint64(max(1024, 2*min(rate, 1e9)))
		if math.IsInf(rate, 1) {
			step = st.total
		}
		mark := min(st.total, max(need, st.mark.Load()+step))
		parts := make([]string, len(st.files))
		for i, f := range st.files {
			parts[i], _ = filepath.Rel(is.cfg.Dir, f.Path)
		}
		if err := writeJournal(st.journal, journalJSON{Slot: st.slot, Parts: parts, Mark: mark}); err != nil {
			return err
		}
		st.mark.Store(mark)
	}
	st.tokens.Add(int64(n))
	return nil
}

// updateHint recomputes the hint from the shake rate or the operator's
// degrade settings.
func (is *Issuer) updateHint() {
	is.mu.Lock()
	defer is.mu.Unlock()
	h := ShakeHint{RetryAfterMS: uint32(is.retry.Milliseconds()), ProbPermille: 1000}
	switch {
	case is.degrade != nil:
		h = *is.degrade
		if h.RetryAfterMS == 0 {
			h.RetryAfterMS = uint32(is.retry.Milliseconds())
		}
	case is.cfg.ShakeCapacity > 0 && is.shakeRate > is.cfg.ShakeCapacity:
		// Ask for as much less as needed to get back under capacity: send
		// a shake with probability capacity/rate and at most as often as
		// the retry hint, stretched by the overload factor.
		f := is.shakeRate / is.cfg.ShakeCapacity
		h.ProbPermille = uint32(max(1, 1000/f))
		h.MinIntervalMS = uint32(min(60000, float64(h.RetryAfterMS)*f))
		h.RetryAfterMS = h.MinIntervalMS
	}
	is.hint.Store(&h)
}

// SetSpeed sets the pacing factor (>1 hands a slot out sooner, <1 slower).
func (is *Issuer) SetSpeed(f float64) error {
	if !(f > 0 && f <= 1000) {
		return fmt.Errorf("speed %v: want (0, 1000]", f)
	}
	is.mu.Lock()
	is.speed = f
	is.mu.Unlock()
	return nil
}

// SetLimit sets the per-second issue limit (0: none).
func (is *Issuer) SetLimit(perSec float64) error {
	if !(perSec >= 0) || math.IsInf(perSec, 0) {
		return fmt.Errorf("limit %v: want ≥ 0", perSec)
	}
	is.mu.Lock()
	is.limit = perSec
	is.mu.Unlock()
	return nil
}

// SetDegrade forces the hint every reply carries (nil: back to automatic).
func (is *Issuer) SetDegrade(h *ShakeHint) {
	is.mu.Lock()
	if h != nil {
		c := *h
		if c.ProbPermille == 0 || c.ProbPermille > 1000 {
			c.ProbPermille = 1000
		}
		h = &c
	}
	is.degrade = h
	is.mu.Unlock()
	is.updateHint()
}

// SetRetryAfter sets the "shake again after" hint for normal operation.
func (is *Issuer) SetRetryAfter(d time.Duration) {
	is.mu.Lock()
	is.retry = d
	is.mu.Unlock()
	is.updateHint()
}

// SetDown marks an instance down (or up again); it takes effect at the next
// slot boundary: this instance then serves the down instance's parts it
// holds backups of.
func (is *Issuer) SetDown(instance int, down bool) {
	is.mu.Lock()
	if down {
		is.down[instance] = true
	} else {
		delete(is.down, instance)
	}
	is.mu.Unlock()
}

// IssuerStatus is a snapshot for the admin API.
type IssuerStatus struct {
	Instance   int       `json:"instance"`
	Slot       int64     `json:"slot"` // -1: none running
	Files      []string  `json:"files"`
	Tickets    uint64    `json:"tickets"`
	Taken      uint64    `json:"taken"`
	Tokens     int64     `json:"tokens"`
	Mark       uint64    `json:"journal_mark"`
	SlotEnd    time.Time `json:"slot_end"`
	Speed      float64   `json:"speed"`
	Limit      float64   `json:"limit_per_s"`
	Down       []int     `json:"down"`
	ShakesPerS float64   `json:"shakes_per_s"`
	Shakes     uint64    `json:"shakes_total"`
	Issued     uint64    `json:"issued_total"`
	Hint       ShakeHint `json:"hint"`
	Degraded   bool      `json:"degrade_forced"`
}

// Status returns a snapshot.
func (is *Issuer) Status() IssuerStatus {
	s := IssuerStatus{Instance: is.cfg.Instance, Slot: -1, Shakes: is.shakes.Load(), Issued: is.issued.Load(), Hint: *is.hint.Load()}
	if st := is.cur.Load(); st != nil {
		s.Slot, s.Tickets, s.Taken, s.Tokens, s.SlotEnd = int64(st.slot), st.total, st.taken(), st.tokens.Load(), st.end
		for _, f := range st.files {
			s.Files = append(s.Files, filepath.Base(f.Path))
		}
		s.Mark = st.mark.Load()
	}
	is.mu.Lock()
	s.Speed, s.Limit, s.ShakesPerS, s.Degraded = is.speed, is.limit, is.shakeRate, is.degrade != nil
	for d := range is.down {
		s.Down = append(s.Down, d)
	}
	is.mu.Unlock()
	sort.Ints(s.Down)
	return s
}

// RefillForBenchmark rewinds the current slot to its first record and fills
// the bucket, so that a benchmark can shake forever. It hands tickets out
// again: never call it outside benchmarks.
func (is *Issuer) RefillForBenchmark() {
	if st := is.cur.Load(); st != nil {
		st.cursor.Store(0)
		st.tokens.Store(int64(st.total))
	}
}
