package gateway

// Shake red packets on the gateway (docs/shake.md, docs/protocol.md):
//
//   - SHAKE is answered on the event loop: shake.Issuer takes a quota token
//     and the next record from the mapped slot files with atomic operations
//     and seals it for the connection's user straight into a pooled reply
//     buffer; the SHAKE_RESP body is encoded by hand. No RPC, no database,
//     no allocation (TCP).
//   - OPEN parses the body on the loop and queues the ticket to a bounded
//     pool (a full queue answers "busy" at once, on the loop); a pool
//     goroutine calls the opener (in-process: verify, then claim+enqueue on
//     JetStream; or a remote opener service) and writes OPEN_RESP with
//     AsyncWrite.

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/opening"
)

// ShakeConfig enables SHAKE and OPEN. Without it (nil) both are still
// answered: "no event here".
type ShakeConfig struct {
	Issuer      *shake.Issuer     // dispenses on the loop; nil: SHAKE says "no slot running"
	Opener      opening.Interface // runs OPEN; nil: OPEN says "no event"
	Verifier    *shake.Verifier   // the in-process opener's, for the admin key-policy switch (optional)
	OpenPool    int               // goroutines running OPEN (default 64)
	OpenQueue   int               // OPENs waiting for one (default 4096)
	OpenTimeout time.Duration     // deadline of one OPEN (default 3s)
}

type shaker struct {
	s   *Server
	cfg ShakeConfig
	off atomic.Bool // the operator's "shake off" switch

	jobs chan *openJob
	wg   sync.WaitGroup
	once sync.Once

	results [4]prometheus.Counter  // by shake.ShakeResult
	opens   *prometheus.CounterVec // code
	openDur prometheus.Observer    // seconds from OPEN received to answer
	openQ   prometheus.GaugeFunc   // queued
}

type openJob struct {
	c      *conn
	seq    uint16
	uid    uint64
	ticket []byte
	at     time.Time
}

var shakeBufs = sync.Pool{New: func() any { b := make([]byte, 0, 128); return &b }}

func newShaker(s *Server) *shaker {
	sh := &shaker{s: s}
	if s.cfg.Shake != nil {
		sh.cfg = *s.cfg.Shake
	}
	if sh.cfg.OpenPool <= 0 {
		sh.cfg.OpenPool = 64
	}
	if sh.cfg.OpenQueue <= 0 {
		sh.cfg.OpenQueue = 4096
	}
	if sh.cfg.OpenTimeout <= 0 {
		sh.cfg.OpenTimeout = 3 * time.Second
	}
	rv := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_shake_total", Help: "SHAKEs answered, by result (ticket, none, idle, ended)."}, []string{"result"})
	for i, n := range []string{"ticket", "none", "idle", "ended"} {
		sh.results[i] = rv.WithLabelValues(n)
	}
	sh.opens = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_open_total", Help: "OPENs answered, by code."}, []string{"code"})
	for c := opening.OK; c <= opening.NoEvent; c++ { // at 0 from start-up
		sh.opens.WithLabelValues(c.String())
	}
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "longlink_open_seconds", Help: "OPEN latency on the gateway (queue + verify + claim/enqueue).",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16)})
	sh.openDur = h
	sh.jobs = make(chan *openJob, sh.cfg.OpenQueue)
	sh.openQ = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "longlink_open_queued", Help: "OPENs waiting for a pool goroutine."}, func() float64 { return float64(len(sh.jobs)) })
	for _, c := range []prometheus.Collector{rv, sh.opens, h, sh.openQ} {
		_ = s.metrics.reg.Register(c)
	}
	for i := 0; i < sh.cfg.OpenPool; i++ {
		sh.wg.Add(1)
		go sh.worker()
	}
	return sh
}

// stop ends the OPEN pool; queued OPENs are dropped (clients retry).
func (sh *shaker) stop() {
	sh.once.Do(func() { close(sh.jobs) })
	sh.wg.Wait()
}

// onShake answers a SHAKE on the event loop.
func (sh *shaker) onShake(c *conn, seq uint16) {
	bp := shakeBufs.Get().(*[]byte)
	b := sh.appendShakeRsp((*bp)[:0], c.uid, seq)
	sh.s.send(c, b)
	*bp = b
	shakeBufs.Put(bp)
}

// appendShakeRsp appends a whole SHAKE_RESP frame: the sealed ticket is
// written straight into dst. No allocation when dst has 128 bytes spare.
// shakeOffHint answers every shake while the operator has switched shaking off.
var shakeOffHint = shake.ShakeHint{RetryAfterMS: 60000, MinIntervalMS: 60000}

func (sh *shaker) appendShakeRsp(dst []byte, uid uint64, seq uint16) []byte {
	off := len(dst)
	dst = append(dst, make([]byte, codec.HeaderSize+2)...) // header, then field 2's tag and length
	var (
		res  shake.ShakeResult
		hint *shake.ShakeHint
	)
	if iss := sh.cfg.Issuer; iss != nil && !sh.off.Load() {
		dst, res, hint = iss.Shake(dst, uid)
	} else if sh.off.Load() {
		res, hint = shake.ShakeIdle, &shakeOffHint
	} else {
		res, hint = shake.ShakeIdle, &noEventHint
	}
	if res == shake.ShakeTicket {
		dst[off+codec.HeaderSize] = byte(protowire.EncodeTag(2, protowire.BytesType))
		dst[off+codec.HeaderSize+1] = shake.SealedSize
	} else {
		dst = dst[:len(dst)-2]
	}
	if res != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(res))
	}
	if hint.RetryAfterMS != 0 {
		dst = protowire.AppendTag(dst, 3, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(hint.RetryAfterMS))
	}
	if hint.MinIntervalMS != 0 {
		dst = protowire.AppendTag(dst, 4, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(hint.MinIntervalMS))
	}
	if hint.ProbPermille != 0 && hint.ProbPermille < 1000 {
		dst = protowire.AppendTag(dst, 5, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(hint.ProbPermille))
	}
	codec.PutHeader(dst[off:], codec.CmdShakeRsp, 0, seq, len(dst)-off-codec.HeaderSize)
	sh.results[res&3].Inc()
	return dst
}

var noEventHint = shake.ShakeHint{RetryAfterMS: 60000}

// parseOpen decodes an Open body without allocating: the ticket aliases b.
func parseOpen(b []byte) (ticket []byte, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			ticket, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, false
		}
		b = b[n:]
	}
	return ticket, true
}

// onOpen queues an OPEN; runs on the loop and never blocks.
func (sh *shaker) onOpen(c *conn, seq uint16, body []byte) {
	ticket, ok := parseOpen(body)
	switch {
	case !ok || len(ticket) != shake.SealedSize:
		sh.replyNow(c, seq, opening.Result{Code: opening.Invalid})
		return
	case sh.cfg.Opener == nil:
		sh.replyNow(c, seq, opening.Result{Code: opening.NoEvent})
		return
	case int(c.inflight.Load()) >= sh.s.cfg.MaxInflight:
		sh.replyNow(c, seq, opening.Result{Code: opening.Busy, RetryAfter: 200 * time.Millisecond})
		return
	}
	j := &openJob{c: c, seq: seq, uid: c.uid, ticket: append([]byte(nil), ticket...), at: time.Now()}
	c.inflight.Add(1)
	select {
	case sh.jobs <- j:
	default:
		c.inflight.Add(-1)
		sh.replyNow(c, seq, opening.Result{Code: opening.Busy, RetryAfter: 500 * time.Millisecond})
	}
}

func openRspFrame(seq uint16, r opening.Result) []byte {
	body, _ := proto.Marshal(r.Rsp())
	return codec.AppendFrame(nil, codec.CmdOpenRsp, 0, seq, body)
}

func (sh *shaker) replyNow(c *conn, seq uint16, r opening.Result) {
	sh.opens.WithLabelValues(r.Code.String()).Inc()
	sh.s.send(c, openRspFrame(seq, r))
}

func (sh *shaker) worker() {
	defer sh.wg.Done()
	for j := range sh.jobs {
		if !sh.run(j) { // else the answer's delivery ends the call
			sh.s.callDone(j.c)
		}
	}
}

// run opens one ticket and queues the answer (reporting whether it did),
// like a call's: on the loop, never after a closing ERROR, and to a client
// that half-closed.
func (sh *shaker) run(j *openJob) (sent bool) {
	if c := j.c; c.closeCode.Load() != 0 || c.state.Load() != stateAuthed && !c.orphaned() {
		return false // closed while queued; the client retries on its next connection
	}
	ctx, cancel := context.WithTimeout(context.Background(), sh.cfg.OpenTimeout)
	r := sh.cfg.Opener.Open(ctx, j.uid, j.ticket)
	cancel()
	sh.opens.WithLabelValues(r.Code.String()).Inc()
	sh.openDur.Observe(time.Since(j.at).Seconds())
	a := sh.s.newAnswer(j.c)
	a.bb.B = append(a.bb.B, openRspFrame(j.seq, r)...)
	a.queue()
	return true
}

// shakeRoutes adds the shake switches to the admin mux:
//
//	GET  /shake/status                      issuer and key-policy snapshot
//	POST /shake/speed   {"speed": 2}        pacing factor
//	POST /shake/limit   {"per_s": 5000}     per-second issue limit (0: none)
//	POST /shake/degrade {"min_interval_ms": 5000, "probability_permille": 200, "retry_after_ms": 5000} | {"auto": true}
//	POST /shake/down    {"instance": 3, "down": true}   failover from the next slot
//	POST /shake/keys    {"allow": [..], "deny": [..]}   ticket-key whitelist / blacklist
func (s *Server) shakeRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/shake/", s.handleShakeAdmin)
}

type shakeAdminReq struct {
	Speed       *float64 `json:"speed"`
	PerS        *float64 `json:"per_s"`
	MinInterval uint32   `json:"min_interval_ms"`
	Prob        uint32   `json:"probability_permille"`
	RetryAfter  uint32   `json:"retry_after_ms"`
	Auto        bool     `json:"auto"`
	Instance    *int     `json:"instance"`
	Down        bool     `json:"down"`
	Allow       []uint16 `json:"allow"`
	Deny        []uint16 `json:"deny"`
}

// ShakeStatus is GET /shake/status.
type ShakeStatus struct {
	Issuer *shake.IssuerStatus `json:"issuer,omitempty"`
	Allow  []uint16            `json:"key_allow,omitempty"`
	Deny   []uint16            `json:"key_deny,omitempty"`
}

func (s *Server) handleShakeAdmin(w http.ResponseWriter, r *http.Request) {
	sc := s.shake.cfg
	iss := sc.Issuer
	what := r.URL.Path[len("/shake/"):]
	if what != "status" {
		if r.Method != http.MethodPost && r.Method != http.MethodPut {
			http.Error(w, "POST or PUT", http.StatusMethodNotAllowed)
			return
		}
		var q shakeAdminReq
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&q); err != nil {
			http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		var err error
		switch {
		case what == "keys":
			if sc.Verifier == nil {
				http.Error(w, "no in-process opener here: set the key policy on the opener service", http.StatusConflict)
				return
			}
			sc.Verifier.SetKeyPolicy(q.Allow, q.Deny)
		case iss == nil:
			http.Error(w, "no shake event on this gateway", http.StatusConflict)
			return
		case what == "speed" && q.Speed != nil:
			err = iss.SetSpeed(*q.Speed)
		case what == "limit" && q.PerS != nil:
			err = iss.SetLimit(*q.PerS)
		case what == "degrade":
			if q.Auto {
				iss.SetDegrade(nil)
			} else {
				iss.SetDegrade(&shake.ShakeHint{MinIntervalMS: q.MinInterval, ProbPermille: q.Prob, RetryAfterMS: q.RetryAfter})
			}
		case what == "down" && q.Instance != nil:
			iss.SetDown(*q.Instance, q.Down)
		default:
			http.Error(w, "unknown switch or missing field", http.StatusBadRequest)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	var st ShakeStatus
	if iss != nil {
		is := iss.Status()
		st.Issuer = &is
	}
	if sc.Verifier != nil {
		st.Allow, st.Deny = sc.Verifier.KeyPolicy()
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(st)
}
