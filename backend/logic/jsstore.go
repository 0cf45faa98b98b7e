package logic

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
)

// JSConfig configures the replicated JetStream store.
type JSConfig struct {
	Conn     *nats.Conn    // connected; the store does not close it unless OwnConn
	OwnConn  bool          // Close closes Conn
	Stream   string        // default "LONGLINK_LOGIC"
	Prefix   string        // of the stream's subjects (default "lgc")
	Replicas int           // stream replicas (default 3: a quorum survives one node)
	Timeout  time.Duration // per request to the stream leader (default 3s)
}

// jsStore is the Store over one JetStream stream that replicates by Raft.
// Every key is a subject holding one message (MaxMsgsPerSubject 1):
//
//	<prefix>.h.<uid>               → u64 head (last assigned version)
//	<prefix>.l.<uid>.<version>     → ts_ms u64 | type u8 | SyncItem (as bbolt's log)
//	<prefix>.s.<uid>.<hex key>     → u64 version of the live state entry
//	<prefix>.t.<table>.<uid>.<hex> → the Get/Put tables (uid 0: global; NextID's counters in meta)
//	<prefix>.q.<id>                → FanoutJob
//
// A transaction reads from the stream leader (MSG.GET, so it sees every
// acknowledged write), buffers its writes and commits them as one atomic
// batch (Nats-Batch-*): every written key that the transaction read carries
// Nats-Expected-Last-Subject-Sequence of the read, so the batch commits
// only if no other writer changed those keys in between (optimistic
// concurrency); a conflict re-runs the transaction. Deletes write a
// tombstone (header Lgc-Del) that expires after an hour.
type jsStore struct {
	nc      *nats.Conn
	own     bool
	stream  string
	prefix  string
	api     string // $JS.API.STREAM.MSG.GET.<stream>
	del     string
	timeout time.Duration
	ids     idBlocks
}

const (
	hdrDel     = "Lgc-Del"
	tombTTL    = "1h"
	jsMaxTries = 200
	// jsMaxAppends bounds the appends of one fan-out transaction: each is
	// two messages (head and entry) and an atomic batch holds at most 1000
	// by default.
	jsMaxAppends = 400
)

// errConflict: another writer changed a key this transaction read.
var errConflict = errors.New("logic: store write conflict")

// errNotDelivered: the commit found no responder (the stream's interest
// has not yet reached this server: a stream just created, a leader just
// elected). Nothing of the batch was stored without its commit, so the
// transaction is re-run, for up to the store's timeout.
var errNotDelivered = errors.New("logic: store commit not delivered (no responders)")

// OpenJetStream opens (creating or updating) the store's stream.
func OpenJetStream(cfg JSConfig) (Store, error) {
	if cfg.Conn == nil {
		return nil, errors.New("logic: JetStream store without a NATS connection")
	}
	if cfg.Stream == "" {
		cfg.Stream = "LONGLINK_LOGIC"
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "lgc"
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 3
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, err
	}
	sc := jetstream.StreamConfig{
		Name:               cfg.Stream,
		Subjects:           []string{cfg.Prefix + ".>"},
		Storage:            jetstream.FileStorage,
		Replicas:           cfg.Replicas,
		MaxMsgsPerSubject:  1,
		Discard:            jetstream.DiscardOld,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		AllowMsgTTL:        true,
	}
	// A cluster that is still forming (no meta leader yet, peers not all
	// known) answers late or "no suitable peers": retry that for up to 30s;
	// anything else is a configuration error, reported at once.
	for deadline := time.Now().Add(30 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = js.CreateOrUpdateStream(ctx, sc)
		cancel()
		transient := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
			err != nil && strings.Contains(err.Error(), "no suitable peers")
		if !transient || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		hint := ""
		if cfg.Replicas > 1 {
			hint = fmt.Sprintf(" (%d replicas need a JetStream cluster of at least %d servers; a single server needs ?replicas=1)", cfg.Replicas, cfg.Replicas)
		}
		return nil, fmt.Errorf("logic: JetStream stream %s: %w%s", cfg.Stream, err, hint)
	}
	st := &jsStore{
		nc: cfg.Conn, own: cfg.OwnConn, stream: cfg.Stream, prefix: cfg.Prefix, timeout: cfg.Timeout,
		api: "$JS.API.STREAM.MSG.GET." + cfg.Stream,
		del: "$JS.API.STREAM.MSG.DELETE." + cfg.Stream,
	}
	// A stream just created (or whose leader is being elected) is not
	// readable for a few seconds: wait for its leader to answer a read,
	// or the first transaction (New's) fails and the instance does not
	// start.
	var rerr error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, _, rerr = st.msgGet(cfg.Prefix+".h.0", false, 0); rerr == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rerr != nil {
		return nil, fmt.Errorf("logic: JetStream stream %s has no leader answering: %w", cfg.Stream, rerr)
	}
	return st, nil
}

func (s *jsStore) Update(fn func(Tx) error) error { return s.UpdateNow(fn) }

// UpdateNow runs fn and commits, re-running it on a conflict.
func (s *jsStore) UpdateNow(fn func(Tx) error) error {
	var undelivered time.Time
	for try := 0; ; try++ {
		t := s.newTx(true)
		err := fn(t)
		if t.err != nil {
			// A failed read makes the key look absent, so fn may have
			// concluded something logical from it ("no such group"): the
			// store's failure is the answer, a transient one.
			err = unavailable(t.err)
		}
		if err == nil {
			err = t.commit()
			if errors.Is(err, errNotDelivered) {
				if undelivered.IsZero() {
					undelivered = time.Now()
				}
				if time.Since(undelivered) < s.timeout {
					time.Sleep(50 * time.Millisecond)
					continue
				}
			}
			if err != nil && !errors.Is(err, errConflict) {
				err = unavailable(err)
			}
		}
		if !errors.Is(err, errConflict) || try >= jsMaxTries {
			return err
		}
		// Back off with jitter so that contending writers spread out.
		d := time.Duration(100<<min(try, 6)) * time.Microsecond
		time.Sleep(time.Duration(mrand.Int64N(int64(d))) + 50*time.Microsecond)
	}
}

func (s *jsStore) View(fn func(Tx) error) error {
	t := s.newTx(false)
	err := fn(t)
	if t.err != nil {
		return unavailable(t.err) // as in UpdateNow: not what fn made of a failed read
	}
	return err
}

// unavailable classifies a store failure (a read or commit that failed or
// timed out, while the stream has no leader or no quorum) for the callers:
// transient, code 2003 with a retry hint. The gateway's pool does not
// eject an instance for it (every instance shares the store), and the
// client retries (a send with its client_msg_id: a commit whose answer
// was lost may have been applied).
func unavailable(err error) error {
	if k, _ := backend.Classify(err); err == nil || k != backend.KindSystem {
		return err
	}
	return &backend.Error{Kind: backend.KindUnavailable, Code: codec.CodeUnavailable, Msg: "logic store unavailable: " + err.Error(), RetryAfter: 1000}
}

func (s *jsStore) Close() error {
	if s.own {
		s.nc.Close()
	}
	return nil
}

// MaxTxAppends implements the fan-out's chunking hint.
func (s *jsStore) MaxTxAppends() int { return jsMaxAppends }

func (s *jsStore) newTx(write bool) *jsTx {
	return &jsTx{s: s, write: write, reads: map[string]jsRec{}, writes: map[string]jsWrite{}}
}

// jsRec is a key as read: seq 0 when it has no message.
type jsRec struct {
	data []byte
	seq  uint64
	live bool // a value, not absent or a tombstone
}

type jsWrite struct {
	data []byte
	del  bool
}

type jsTx struct {
	s      *jsStore
	write  bool
	reads  map[string]jsRec
	order  []string
	writes map[string]jsWrite
	err    error
}

func (t *jsTx) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

// msgGet asks the stream leader for one message: the last on subject, or
// with next set the first at or after seq on subject (wildcards allowed).
func (s *jsStore) msgGet(subject string, next bool, seq uint64) (jsRec, string, error) {
	var q struct {
		Seq     uint64 `json:"seq,omitempty"`
		LastFor string `json:"last_by_subj,omitempty"`
		NextFor string `json:"next_by_subj,omitempty"`
	}
	if next {
		q.Seq, q.NextFor = max(seq, 1), subject
	} else {
		q.LastFor = subject
	}
	b, _ := json.Marshal(q)
	m, err := s.nc.Request(s.api, b, s.timeout)
	if err != nil {
		return jsRec{}, "", fmt.Errorf("logic: store read %s: %w", subject, err)
	}
	var r struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Subject string `json:"subject"`
			Seq     uint64 `json:"seq"`
			Hdrs    []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return jsRec{}, "", fmt.Errorf("logic: store read %s: %w", subject, err)
	}
	if r.Error != nil {
		if r.Error.ErrCode == 10037 { // no message found (other 404s, like a missing stream, are errors)
			return jsRec{}, "", nil
		}
		return jsRec{}, "", fmt.Errorf("logic: store read %s: %s (%d)", subject, r.Error.Description, r.Error.ErrCode)
	}
	if r.Message == nil {
		return jsRec{}, "", nil
	}
	rec := jsRec{data: r.Message.Data, seq: r.Message.Seq, live: true}
	if len(r.Message.Hdrs) > 0 && strings.Contains(string(r.Message.Hdrs), hdrDel+":") {
		rec.live, rec.data = false, nil
	}
	return rec, r.Message.Subject, nil
}

// get returns the key as this transaction sees it (its own writes first).
func (t *jsTx) get(subj string) []byte {
	if w, ok := t.writes[subj]; ok {
		if w.del {
			return nil
		}
		return w.data
	}
	if r, ok := t.reads[subj]; ok {
		return r.data
	}
	if t.err != nil {
		return nil
	}
	r, _, err := t.s.msgGet(subj, false, 0)
	if err != nil {
		t.fail(err)
		return nil
	}
	t.reads[subj] = r
	return r.data
}

func (t *jsTx) put(subj string, v []byte, del bool) error {
	if !t.write {
		return errors.New("logic: write in a read-only transaction")
	}
	if _, ok := t.writes[subj]; !ok {
		t.order = append(t.order, subj)
	}
	t.writes[subj] = jsWrite{data: append([]byte(nil), v...), del: del}
	return nil
}

// Prefetch implements Prefetcher: the keys not yet read, in parallel.
func (t *jsTx) Prefetch(keys ...Key) {
	var need []string
	for _, k := range keys {
		subj := t.s.headSubj(k.UID)
		if k.Table != "" {
			subj = t.s.tableSubj(k.Table, k.UID, k.Key)
		}
		_, read := t.reads[subj]
		_, written := t.writes[subj]
		if !read && !written && !slices.Contains(need, subj) {
			need = append(need, subj)
		}
	}
	if len(need) < 2 || t.err != nil {
		return
	}
	recs := make([]jsRec, len(need))
	errs := make([]error, len(need))
	var wg sync.WaitGroup
	for i, subj := range need {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs[i], _, errs[i] = t.s.msgGet(subj, false, 0)
		}()
	}
	wg.Wait()
	for i, subj := range need {
		if errs[i] != nil {
			t.fail(errs[i])
			return
		}
		t.reads[subj] = recs[i]
	}
}

// each visits the live messages on a wildcard subject in stream order,
// from the leader, until fn returns false.
func (t *jsTx) each(filter string, from uint64, fn func(subj string, r jsRec) bool) {
	seq := from
	for t.err == nil {
		r, subj, err := t.s.msgGet(filter, true, seq)
		if err != nil {
			t.fail(err)
			return
		}
		if r.seq == 0 {
			return
		}
		seq = r.seq + 1
		if !fn(subj, r) {
			return
		}
	}
}

func (t *jsTx) commit() error {
	if t.err != nil {
		return t.err
	}
	if len(t.order) == 0 {
		return nil
	}
	var idb [12]byte
	_, _ = rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	for i, subj := range t.order {
		w := t.writes[subj]
		m := nats.NewMsg(subj)
		m.Data = w.data
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if r, ok := t.reads[subj]; ok {
			m.Header.Set("Nats-Expected-Last-Subject-Sequence", strconv.FormatUint(r.seq, 10))
		}
		if w.del {
			m.Header.Set(hdrDel, "1")
			m.Header.Set("Nats-TTL", tombTTL)
		}
		if i < len(t.order)-1 {
			if err := t.s.nc.PublishMsg(m); err != nil {
				return fmt.Errorf("logic: store write: %w", err)
			}
			continue
		}
		m.Header.Set("Nats-Batch-Commit", "1")
		rep, err := t.s.nc.RequestMsg(m, t.s.timeout)
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%w: %w", errNotDelivered, err)
		}
		if err != nil {
			// Unknown outcome (the batch may have committed): the caller
			// fails; client_msg_id makes its retry safe.
			return fmt.Errorf("logic: store commit: %w", err)
		}
		var ack struct {
			Error *struct {
				ErrCode     int    `json:"err_code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(rep.Data, &ack); err != nil {
			return fmt.Errorf("logic: store commit: %w", err)
		}
		if ack.Error != nil {
			switch ack.Error.ErrCode {
			case 10071, 10164, 10210, 10176: // wrong last sequence (single server, cluster); too many batches in flight; incomplete (a lost message)
				return errConflict
			}
			return fmt.Errorf("logic: store commit: %s (%d)", ack.Error.Description, ack.Error.ErrCode)
		}
	}
	return nil
}

// hexKey is a key as one subject token ("_" for the empty key: a subject
// token cannot be empty, and hex never makes "_").
func hexKey(k []byte) string {
	if len(k) == 0 {
		return "_"
	}
	return hex.EncodeToString(k)
}

func uidS(uid uint64) string { return strconv.FormatUint(uid, 10) }

func (s *jsStore) headSubj(uid uint64) string { return s.prefix + ".h." + uidS(uid) }
func (s *jsStore) logSubj(uid, ver uint64) string {
	return s.prefix + ".l." + uidS(uid) + "." + strconv.FormatUint(ver, 10)
}
func (s *jsStore) stateSubj(uid uint64, k []byte) string {
	return s.prefix + ".s." + uidS(uid) + "." + hexKey(k)
}
func (s *jsStore) tableSubj(table string, uid uint64, k []byte) string {
	return s.prefix + ".t." + table + "." + uidS(uid) + "." + hexKey(k)
}

func lastToken(subj string) string { return subj[strings.LastIndexByte(subj, '.')+1:] }

func (t *jsTx) Head(uid uint64) uint64 {
	if v := t.get(t.s.headSubj(uid)); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (t *jsTx) Append(uid uint64, typ uint8, tsMS int64, stateKey []byte, build func(uint64) []byte) (uint64, error) {
	if !t.write {
		return 0, errors.New("logic: append in a read-only transaction")
	}
	ver := t.Head(uid) + 1
	if t.err != nil {
		return 0, t.err
	}
	_ = t.put(t.s.headSubj(uid), u64(ver), false)
	if len(stateKey) > 0 {
		ss := t.s.stateSubj(uid, stateKey)
		if old := t.get(ss); len(old) == 8 {
			_ = t.put(t.s.logSubj(uid, binary.BigEndian.Uint64(old)), nil, true)
		}
		_ = t.put(ss, u64(ver), false)
	}
	item := build(ver)
	val := make([]byte, 9, 9+len(item))
	binary.BigEndian.PutUint64(val, uint64(tsMS))
	val[8] = typ
	val = append(val, item...)
	return ver, t.put(t.s.logSubj(uid, ver), val, false)
}

func (t *jsTx) State(uid uint64, stateKey []byte) []byte {
	v := t.get(t.s.stateSubj(uid, stateKey))
	if len(v) != 8 {
		return nil
	}
	if e := t.get(t.s.logSubj(uid, binary.BigEndian.Uint64(v))); len(e) >= 9 {
		return e[9:]
	}
	return nil
}

// scanFrom is where a scan of uid's log after version after starts: just
// past that entry when it is still there (stream order is version order:
// the head's compare-and-set serialises a user's appends), else the
// beginning.
func (t *jsTx) scanFrom(uid, after uint64) uint64 {
	if after == 0 {
		return 1
	}
	r, _, err := t.s.msgGet(t.s.logSubj(uid, after), false, 0)
	if err != nil {
		t.fail(err)
		return 1
	}
	if r.live {
		return r.seq + 1
	}
	return 1
}

// Scan stops at the head this transaction read, so that a sync never
// returns an entry beyond the head its new key records.
//
// It reads in batches of direct gets, which any replica may answer. A
// replica applies the stream in order, so what it returns is complete up
// to the last entry returned; only its tail may lag. The scan is known
// complete once it reached the head's entry (or fn stopped it); otherwise
// it goes on from the leader, one message at a time.
func (t *jsTx) Scan(uid, after uint64, fn func(uint64, uint8, []byte) bool) {
	head := t.Head(uid)
	if head <= after || t.err != nil {
		return
	}
	filter := t.s.prefix + ".l." + uidS(uid) + ".*"
	from := t.scanFrom(uid, after)
	done := false
	visit := func(subj string, r jsRec) bool {
		ver, err := strconv.ParseUint(lastToken(subj), 10, 64)
		if err != nil || ver <= after {
			return true
		}
		if ver > head {
			done = true
			return false
		}
		done = ver == head
		if r.live && len(r.data) >= 9 && !fn(ver, r.data[8], r.data[9:]) {
			done = true
		}
		return !done
	}
	for t.err == nil && !done {
		msgs, err := t.s.directBatch(filter, from, directBatchSize)
		if err != nil {
			break // the leader below
		}
		for _, m := range msgs {
			from = m.seq + 1
			if !visit(m.subj, m.rec) {
				return
			}
		}
		if len(msgs) < directBatchSize {
			break // this replica has nothing more: the leader confirms
		}
	}
	if !done && t.err == nil {
		t.each(filter, from, visit)
	}
}

const directBatchSize = 128

type directMsg struct {
	subj string
	seq  uint64
	rec  jsRec
}

// directBatch asks any replica for up to n messages on filter from seq.
func (s *jsStore) directBatch(filter string, seq uint64, n int) ([]directMsg, error) {
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	q, _ := json.Marshal(map[string]any{"seq": max(seq, 1), "next_by_subj": filter, "batch": n})
	if err := s.nc.PublishRequest("$JS.API.DIRECT.GET."+s.stream, inbox, q); err != nil {
		return nil, err
	}
	var out []directMsg
	for {
		m, err := sub.NextMsg(s.timeout)
		if err != nil {
			return nil, err
		}
		if st := m.Header.Get("Status"); st != "" {
			if st == "204" || st == "404" {
				return out, nil // the end of the batch, or nothing (more)
			}
			return nil, fmt.Errorf("logic: direct get: %s %s", st, m.Header.Get("Description"))
		}
		seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("logic: direct get: bad sequence: %w", err)
		}
		r := jsRec{data: m.Data, seq: seq, live: m.Header.Get(hdrDel) == ""}
		if !r.live {
			r.data = nil
		}
		out = append(out, directMsg{subj: m.Header.Get("Nats-Subject"), seq: seq, rec: r})
	}
}

// Trim deletes at once (outside the transaction: trimming is idempotent).
func (t *jsTx) Trim(uid, upto uint64, beforeMS int64, maxN int) int {
	var seqs []uint64
	t.each(t.s.prefix+".l."+uidS(uid)+".*", 1, func(subj string, r jsRec) bool {
		ver, err := strconv.ParseUint(lastToken(subj), 10, 64)
		if err != nil || !r.live || len(r.data) < 9 {
			return true
		}
		if ver > upto {
			return false
		}
		if r.data[8] == typeMessages {
			if int64(binary.BigEndian.Uint64(r.data)) >= beforeMS {
				return false // the rest is younger still (stream order is write order)
			}
			seqs = append(seqs, r.seq)
		}
		return len(seqs) < maxN
	})
	n := 0
	for _, seq := range seqs {
		b, _ := json.Marshal(map[string]any{"seq": seq, "no_erase": true})
		if m, err := t.s.nc.Request(t.s.del, b, t.s.timeout); err == nil && !strings.Contains(string(m.Data), `"error"`) {
			n++
		}
	}
	return n
}

func (t *jsTx) Get(table string, uid uint64, key []byte) []byte {
	return t.get(t.s.tableSubj(table, uid, key))
}

func (t *jsTx) Put(table string, uid uint64, key, value []byte) error {
	return t.put(t.s.tableSubj(table, uid, key), value, false)
}

func (t *jsTx) Delete(table string, uid uint64, key []byte) error {
	if !t.write {
		return errors.New("logic: delete in a read-only transaction")
	}
	return t.put(t.s.tableSubj(table, uid, key), nil, true)
}

// ForEach visits the stored entries overlaid with this transaction's
// writes, in key order (as bbolt does). The devices table is read from the
// leader (trimming takes the minimum over every device: a device missing
// from a lagging replica would get its messages trimmed unconfirmed);
// other tables (dedup, only scanned for expiry) in batches from any
// replica.
func (t *jsTx) ForEach(table string, uid uint64, fn func(k, v []byte) bool) {
	prefix := t.s.prefix + ".t." + table + "." + uidS(uid) + "."
	kv := map[string][]byte{}
	add := func(subj string, r jsRec) bool {
		if r.live {
			kv[strings.TrimPrefix(subj, prefix)] = r.data
		}
		return true
	}
	if table == TableDevices {
		t.each(prefix+"*", 1, add)
	} else {
		for from := uint64(1); t.err == nil; {
			msgs, err := t.s.directBatch(prefix+"*", from, directBatchSize)
			if err != nil {
				t.fail(err)
				return
			}
			for _, m := range msgs {
				add(m.subj, m.rec)
				from = m.seq + 1
			}
			if len(msgs) < directBatchSize {
				break
			}
		}
	}
	for subj, w := range t.writes {
		if k, ok := strings.CutPrefix(subj, prefix); ok {
			if w.del {
				delete(kv, k)
			} else {
				kv[k] = w.data
			}
		}
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	slices.Sort(keys) // lower-case hex sorts as the bytes it encodes

	for _, hk := range keys {
		k, err := hex.DecodeString(hk)
		if hk == "_" {
			k, err = []byte{}, nil
		}
		if err != nil {
			continue
		}
		if !fn(k, kv[hk]) {
			return
		}
	}
}

// NextID keeps counters where bbolt does: in the meta table. Ids must be
// unique, not dense (except the fan-out queue's, which the queue reads in
// sequence): each instance reserves a block of idBlock ids at a time in a
// transaction of its own, so that sends do not all contend for one key.
// An id of a transaction that failed is skipped.
func (t *jsTx) NextID(name string) (uint64, error) {
	if name == fanoutCounter {
		return t.casNext(name)
	}
	return t.s.ids.next(t.s, name)
}

// idBlock is how many ids an instance reserves at once.
const idBlock = 1024

type idBlocks struct {
	mu sync.Mutex
	m  map[string][2]uint64 // name → next, end (exclusive)
}

func (b *idBlocks) next(s *jsStore, name string) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.m[name]
	if r[0] >= r[1] {
		var end uint64
		err := s.UpdateNow(func(tx Tx) error {
			var err error
			t := tx.(*jsTx)
			start, err := t.casNext(name)
			if err != nil {
				return err
			}
			end = start + idBlock - 1 // casNext reserved start; extend to the block
			return t.put(t.s.tableSubj(TableMeta, 0, []byte(name)), u64(end), false)
		})
		if err != nil {
			return 0, err
		}
		r = [2]uint64{end - idBlock + 1, end + 1}
	}
	if b.m == nil {
		b.m = map[string][2]uint64{}
	}
	b.m[name] = [2]uint64{r[0] + 1, r[1]}
	return r[0], nil
}

// casNext increments a counter under compare-and-set.
func (t *jsTx) casNext(name string) (uint64, error) {
	subj := t.s.tableSubj(TableMeta, 0, []byte(name))
	var n uint64
	if v := t.get(subj); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	if t.err != nil {
		return 0, t.err
	}
	n++
	return n, t.put(subj, u64(n), false)
}

const fanoutCounter = "_fanout"

func (t *jsTx) Enqueue(value []byte) error {
	id, err := t.NextID(fanoutCounter)
	if err != nil {
		return err
	}
	return t.put(t.s.prefix+".q."+strconv.FormatUint(id, 10), value, false)
}

// The queue's ids are contiguous (NextID is compare-and-set and only a
// committed Enqueue consumes one) and jobs are removed oldest first, so a
// counter of removed ids is the queue's tail: Dequeue reads jobs from there
// by id, and Remove advances it. Two instances diffusing the same job both
// write that counter, so only one commits.
const fanoutDone = "_fanout_done"

func (t *jsTx) queueDone() uint64 {
	if v := t.get(t.s.tableSubj(TableMeta, 0, []byte(fanoutDone))); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (t *jsTx) Dequeue(fn func(uint64, []byte) bool) {
	for id := t.queueDone() + 1; t.err == nil; id++ {
		subj := t.s.prefix + ".q." + strconv.FormatUint(id, 10)
		if w, ok := t.writes[subj]; ok && w.del {
			continue
		}
		v := t.get(subj)
		if v == nil || !fn(id, v) {
			return
		}
	}
}

func (t *jsTx) Remove(id uint64) error {
	if err := t.put(t.s.prefix+".q."+strconv.FormatUint(id, 10), nil, true); err != nil {
		return err
	}
	if id > t.queueDone() {
		return t.put(t.s.tableSubj(TableMeta, 0, []byte(fanoutDone)), u64(id), false)
	}
	return nil
}
