package gateway

import (
	"context"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/bytebufferpool"

	"github.com/longlink/longlink/admission"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
)

// forwarder runs calls coroutine-style: the event loop decodes a REQUEST and
// queues it; one of a bounded set of goroutines runs plain synchronous code
// that calls the backend with a deadline and writes the RESPONSE with
// AsyncWrite. A full queue answers "busy" at once, on the loop.
//
// The queue has one lane per priority class (business priority 0-1, 2-3,
// 4 and above) and goroutines always take from the most important lane
// first, so admitted high-priority calls never wait behind low-priority
// ones; a call that waited longer than MaxQueueWait is answered busy
// instead of being run late.
type forwarder struct {
	s       *Server
	lanes   [priorityLanes]chan *job
	quit    chan struct{}
	wg      sync.WaitGroup
	ctx     context.Context
	stopCtx context.CancelFunc
	busy    atomic.Int64 // jobs queued or running, for drain
	yield   bool         // submit yields to the worker it woke (Config.CallYield)
	las     atomic.Pointer[[]*loopAnswers]
	lasMu   sync.Mutex

	stats statusCounters

	adm         *admission.Controller
	retryTokens atomic.Int64 // retry budget, in tenths of a retry

	closeMu sync.RWMutex // call (HTTP) sends under the read lock; stop closes jobs under the write lock
	closed  bool

	methodsMu sync.RWMutex
	methods   map[string]*method // interned names, at most maxInterned
}

// method is a method name interned for the hot path. name is always the
// caller's real method: it is what admission and the backend see. The
// metrics label is separate and bounded: a name gets a label of its own
// only if it is in the priority table or once the backend has answered it
// with something other than unknown_method, while labels last; until then,
// and after, it counts under "other". So junk names cannot take labels from
// real methods, and no name ever changes what a call does.
type method struct {
	name    string
	prio    uint8 // business priority, from the real name
	known   bool  // in the priority table
	settled atomic.Bool
	m       atomic.Pointer[methodMetrics]
}

// maxInterned bounds the interned names (names the backend refuses as
// unknown are dropped again, so junk does not stay). Names beyond it still
// work; they just allocate per call.
const maxInterned = 4096

// MaxMethodLen is the longest method name accepted (TCP and HTTP); longer,
// empty or non-UTF-8 names are answered 1002 bad_request.
const MaxMethodLen = 128

// validMethod reports whether name is acceptable as a method name.
func validMethod(name []byte) bool {
	return len(name) > 0 && len(name) <= MaxMethodLen && utf8.Valid(name)
}

// job is one queued call. Pooled; body is reused across calls.
type job struct {
	c        *conn // the TCP/WebSocket caller; nil for an HTTP call
	seq      uint16
	uid      uint64
	device   string
	m        *method
	body     []byte
	enqueued time.Time
	deadline time.Time
	done     chan callResult // HTTP calls: the answer goes here instead of to c
}

// callResult is a finished call, for callers that wait (HTTP).
type callResult struct {
	code       codec.Code
	msg        string
	body       []byte
	retryAfter uint32
}

var jobPool = sync.Pool{New: func() any { return new(job) }}

var respPool bytebufferpool.Pool

func newForwarder(s *Server) *forwarder {
	ctx, cancel := context.WithCancel(context.Background())
	f := &forwarder{s: s, quit: make(chan struct{}), ctx: ctx, stopCtx: cancel, methods: map[string]*method{}, yield: s.cfg.CallYield}
	for i := range f.lanes {
		f.lanes[i] = make(chan *job, s.cfg.QueueSize)
	}
	f.retryTokens.Store(100) // start with 10 retries banked
	f.adm = admission.New(s.cfg.Admission, time.Now)
	f.adm.OnLevel = func(th uint32, over bool) {
		s.metrics.admLevel.Set(float64(th))
		if over {
			s.metrics.admOverload.Set(1)
		} else {
			s.metrics.admOverload.Set(0)
		}
	}
	return f
}

func (f *forwarder) start() {
	for i := 0; i < f.s.cfg.PoolSize; i++ {
		f.wg.Add(1)
		go f.worker()
	}
	f.wg.Add(1)
	go func() { // admission windows also close on time when calls are few
		defer f.wg.Done()
		t := time.NewTicker(f.adm.Window() / 4)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				f.adm.Tick()
			case <-f.ctx.Done():
				return
			}
		}
	}()
}

// shed answers a call refused by admission control.
func (f *forwarder) shedRetryAfter() uint32 {
	ra := f.adm.RetryAfter()
	return uint32((ra + time.Duration(rand.Int64N(int64(ra)))) / time.Millisecond)
}

// admit runs admission control for a call; false means shed it.
func (f *forwarder) admit(m *method, uid uint64) bool {
	if f.adm.Admit(f.adm.CallLevel(m.prio, uid)) {
		return true
	}
	f.s.metrics.admShed.WithLabelValues(strconv.Itoa(int(m.prio))).Inc()
	f.stats.shed.Add(1)
	f.s.metrics.calls.WithLabelValues(m.m.Load().label, codec.CodeBusy.String()).Inc()
	return false
}

// stop cancels calls in flight and ends the workers. Call after the event
// loops have stopped, so nothing is submitted any more.
func (f *forwarder) stop() {
	f.stopCtx()
	f.closeMu.Lock()
	f.closed = true
	close(f.quit)
	f.closeMu.Unlock()
	f.wg.Wait()
}

// wait blocks until every queued and running call has been answered, or ctx ends.
func (f *forwarder) wait(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for f.busy.Load() > 0 {
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// method interns a method name: no allocation once the name has been seen.
func (f *forwarder) method(name []byte) *method {
	f.methodsMu.RLock()
	m := f.methods[string(name)]
	f.methodsMu.RUnlock()
	if m != nil {
		return m
	}
	n := string(name)
	known := f.adm.Known(n)
	m = &method{name: n, prio: f.adm.BizPriority(n), known: known}
	// Only a known method takes a new label now; others find theirs if they
	// had one before, or share "other" until the backend vouches for them.
	m.m.Store(f.s.metrics.methodSeries(n, known))
	f.methodsMu.Lock()
	if old := f.methods[n]; old != nil {
		m = old
	} else if len(f.methods) < maxInterned {
		f.methods[n] = m
	}
	f.methodsMu.Unlock()
	return m
}

// settle records the backend's verdict on a method: an unknown method is
// forgotten (so junk names do not fill the table); any other answer earns
// the name a metrics label of its own, while labels last.
func (f *forwarder) settle(m *method, code codec.Code) {
	if code == codec.CodeUnknownMethod {
		if !m.known {
			f.methodsMu.Lock()
			if f.methods[m.name] == m {
				delete(f.methods, m.name)
			}
			f.methodsMu.Unlock()
		}
		return
	}
	if code.Retryable() || m.settled.Load() || !m.settled.CompareAndSwap(false, true) {
		return // transient answers prove nothing; settle once
	}
	if m.m.Load() == f.s.metrics.other {
		m.m.Store(f.s.metrics.methodSeries(m.name, true))
	}
}

// submit queues a REQUEST. Runs on the event loop; never blocks.
func (f *forwarder) submit(c *conn, seq uint16, body []byte) {
	method, payload, timeoutMS, ok := parseRequest(body)
	if !ok {
		f.replyNow(c, seq, codec.CodeBadRequest, "malformed Request", 0)
		return
	}
	if !validMethod(method) {
		f.replyNow(c, seq, codec.CodeBadRequest, "bad method: empty, over 128 bytes or not UTF-8", 0)
		return
	}
	if int(c.inflight.Load()) >= f.s.cfg.MaxInflight {
		f.s.metrics.shed.WithLabelValues("conn_inflight").Inc()
		f.replyNow(c, seq, codec.CodeTooManyCall, "too many calls in flight on this connection", 100)
		return
	}
	m := f.method(method)
	if !f.admit(m, c.uid) {
		f.replyNow(c, seq, codec.CodeBusy, "overloaded: retry later", f.shedRetryAfter())
		return
	}
	now := time.Now()
	timeout := f.s.cfg.CallTimeout
	if t := time.Duration(timeoutMS) * time.Millisecond; t > 0 && t < timeout {
		timeout = t
	}
	j := jobPool.Get().(*job)
	j.c, j.seq, j.uid, j.device, j.m, j.done = c, seq, c.uid, c.device, m, nil
	j.body = append(j.body[:0], payload...) // the loop's buffer is reused after we return
	j.enqueued, j.deadline = now, now.Add(timeout)
	c.inflight.Add(1)
	f.busy.Add(1)
	ln := f.lanes[lane(m.prio)]
	var la *loopAnswers
	if f.yield {
		la = f.loopAnswers(c.gc.EventLoop())
		la.mu.Lock()
		la.waiting = true
		la.mu.Unlock()
	}
	select {
	case ln <- j:
		if la != nil && len(ln) == 0 {
			// An idle worker took the job straight from the loop and is now
			// this P's next goroutine, but it would only run once the loop
			// finishes its whole batch of events (and the other P runs the
			// other loop): that wait was most of a call's queueing time on
			// an idle pool. Yield so the call starts now; a busy pool
			// buffered the job (len > 0) and the loop carries on. A call
			// that finishes meanwhile (an in-process backend) leaves its
			// answer in la, written below without a wake-up of the loop.
			runtime.Gosched()
		}
		if la != nil {
			f.drainAnswers(la)
		}
	default:
		if la != nil {
			f.drainAnswers(la)
		}
		c.inflight.Add(-1)
		f.busy.Add(-1)
		f.release(j)
		f.s.metrics.shed.WithLabelValues("queue_full").Inc()
		f.s.metrics.calls.WithLabelValues(m.m.Load().label, codec.CodeBusy.String()).Inc()
		f.replyNow(c, seq, codec.CodeBusy, "server busy", 200)
	}
}

func (f *forwarder) release(j *job) {
	j.c, j.m, j.done, j.device = nil, nil, nil, ""
	if cap(j.body) > 64<<10 {
		j.body = nil // don't pin big buffers in the pool
	}
	jobPool.Put(j)
}

// replyNow answers on the event loop (no backend involved).
func (f *forwarder) replyNow(c *conn, seq uint16, code codec.Code, msg string, retryAfter uint32) {
	bb := respPool.Get()
	bb.B = appendResponse(bb.B[:0], seq, code, msg, nil, retryAfter)
	f.s.send(c, bb.B)
	respPool.Put(bb)
}

func (f *forwarder) worker() {
	defer f.wg.Done()
	req := &backend.Request{Node: f.s.cfg.Node}
	for {
		j := f.next()
		if j == nil {
			return
		}
		sent := f.run(j, req)
		if j.c != nil {
			if !sent { // else the send's callback ends the call
				f.s.callDone(j.c)
			}
			f.release(j)
		} // HTTP jobs are released by their caller
		f.busy.Add(-1)
	}
}

const priorityLanes = 3

// lane maps a business priority to its queue lane.
func lane(prio uint8) int {
	switch {
	case prio <= 1:
		return 0
	case prio <= 3:
		return 1
	}
	return 2
}

// next takes the next job, most important lane first; nil once stopped and
// drained (queued calls are still answered after stop, fast, as the context
// is cancelled).
func (f *forwarder) next() *job {
	for {
		for i := range f.lanes {
			select {
			case j := <-f.lanes[i]:
				return j
			default:
			}
		}
		select {
		case j := <-f.lanes[0]:
			return j
		case j := <-f.lanes[1]:
			return j
		case j := <-f.lanes[2]:
			return j
		case <-f.quit:
			for i := range f.lanes {
				select {
				case j := <-f.lanes[i]:
					return j
				default:
				}
			}
			return nil
		}
	}
}

// run executes one call: plain synchronous code, off the event loop. For a
// connection's call it reports whether it queued the answer (whose callback
// then ends the call, see callDone).
func (f *forwarder) run(j *job, req *backend.Request) (sent bool) {
	start := time.Now()
	queued := start.Sub(j.enqueued)
	mm := j.m.m.Load()
	mm.queue.Observe(queued.Seconds())
	f.adm.Observe(queued)
	f.stats.queueNs.Add(int64(queued))
	f.stats.queueN.Add(1)
	c := j.c
	if c != nil && (c.closeCode.Load() != 0 || c.state.Load() != stateAuthed && !c.orphaned()) {
		return false // closing or closed while queued: nobody to answer
	}
	var (
		resp []byte
		err  error
		code = codec.OK
		msg  string
		ra   uint32
	)
	if !start.Before(j.deadline) {
		code, msg = codec.CodeTimeout, "deadline passed while queued"
		f.s.metrics.shed.WithLabelValues("expired_in_queue").Inc()
	} else if queued > f.adm.MaxQueueWait() {
		// Late is as bad as never under overload: answer busy now rather
		// than run a call whose client has probably given up.
		code, msg, ra = codec.CodeBusy, "overloaded: waited too long in the queue", f.shedRetryAfter()
		f.s.metrics.shed.WithLabelValues("queue_wait").Inc()
		f.stats.shed.Add(1)
	} else {
		ctx, cancel := context.WithDeadline(f.ctx, j.deadline)
		*req = backend.Request{UID: j.uid, Device: j.device, Node: f.s.cfg.Node, Method: j.m.name, Body: j.body}
		if f.retryTokens.Load() < 1000 { // each call earns a tenth of a retry, up to 100 banked
			f.retryTokens.Add(1)
		}
		for attempt := 0; ; attempt++ {
			resp, err = f.s.cfg.Backend.Call(ctx, req)
			if err == nil {
				break
			}
			if kind, _ := backend.Classify(err); kind != backend.KindSystem || attempt >= f.s.cfg.SystemRetries || ctx.Err() != nil {
				break
			}
			// The retry budget keeps retries under ~10% of calls, so they can't
			// amplify an overload of the backend.
			if f.retryTokens.Add(-10) < 0 {
				f.retryTokens.Add(10)
				f.s.metrics.shed.WithLabelValues("retry_budget").Inc()
				break
			}
		}
		cancel()
		mm.backend.Observe(time.Since(start).Seconds())
		if err != nil {
			code, msg, ra = f.classify(j, mm, err, ctx)
		}
		f.settle(j.m, code)
	}
	f.s.metrics.calls.WithLabelValues(mm.label, code.String()).Inc()
	f.stats.calls.Add(1)
	if code != codec.OK {
		f.stats.errors.Add(1)
	}
	if c == nil {
		j.done <- callResult{code: code, msg: msg, body: resp, retryAfter: ra}
		return false
	}
	if c.closeCode.Load() != 0 {
		return false // closing: nothing may follow its ERROR
	}
	a := f.s.newAnswer(c)
	a.bb.B = appendResponse(a.bb.B, j.seq, code, msg, resp, ra)
	a.queue()
	return true
}

// answer writes one RESPONSE on its connection's event loop (a
// gnet.Runnable, pooled), where it can see whether the connection is
// closing: nothing is written after the closing ERROR. Writing it there
// also applies the outbound bound, and reaches a client that half-closed.
type answer struct {
	s  *Server
	c  *conn
	bb *bytebufferpool.ByteBuffer
}

var answerPool = sync.Pool{New: func() any { return new(answer) }}

// newAnswer returns an answer for c with an empty buffer: append the frame
// to a.bb.B, then queue it. The call ends (callDone) when it is delivered.
func (s *Server) newAnswer(c *conn) *answer {
	a := answerPool.Get().(*answer)
	a.s, a.c, a.bb = s, c, respPool.Get()
	a.bb.B = a.bb.B[:0]
	return a
}

// loopAnswers collects the answers for one event loop's connections that
// finish while that loop is yielding to them in submit; the loop writes them
// itself when it resumes, so they need no task and no eventfd wake-up.
type loopAnswers struct {
	el      gnet.EventLoop
	mu      sync.Mutex
	waiting bool      // the loop is in submit and will drain ready
	ready   []*answer // guarded by mu
	spare   []*answer // the loop's, swapped with ready when draining
}

// loopAnswers returns el's answer list, made on first use (loops are few,
// and a linear search over them costs less than a map).
func (f *forwarder) loopAnswers(el gnet.EventLoop) *loopAnswers {
	if las := f.las.Load(); las != nil {
		for _, la := range *las {
			if la.el == el {
				return la
			}
		}
	}
	f.lasMu.Lock()
	defer f.lasMu.Unlock()
	var cur []*loopAnswers
	if las := f.las.Load(); las != nil {
		cur = *las
	}
	for _, la := range cur {
		if la.el == el {
			return la
		}
	}
	la := &loopAnswers{el: el}
	next := append(append([]*loopAnswers(nil), cur...), la)
	f.las.Store(&next)
	return la
}

// drainAnswers ends the loop's wait in submit and writes what arrived. On
// the loop.
func (f *forwarder) drainAnswers(la *loopAnswers) {
	la.mu.Lock()
	la.waiting = false
	got := la.ready
	la.ready = la.spare[:0]
	la.mu.Unlock()
	for i, a := range got {
		got[i] = nil
		c := a.c
		if c.state.Load() == stateClosed || c.closeCode.Load() != 0 ||
			c.gc.OutboundBuffered()+len(a.bb.B) > f.s.cfg.MaxOutbound {
			// Rare cases (closing, orphaned, a slow consumer to close) go
			// the usual way, as a task, never closing a connection from
			// inside another's OnTraffic.
			a.execute()
			continue
		}
		a.deliver(true)
	}
	la.spare = got[:0]
}

// queue hands the answer to c's event loop: straight into its list when
// the loop is yielding to this very call, else as a task.
func (a *answer) queue() {
	if la := a.s.fwd.loopAnswersIfYield(a.c); la != nil {
		la.mu.Lock()
		if la.waiting {
			la.ready = append(la.ready, a)
			la.mu.Unlock()
			return
		}
		la.mu.Unlock()
	}
	a.execute()
}

func (f *forwarder) loopAnswersIfYield(c *conn) *loopAnswers {
	if !f.yield {
		return nil
	}
	return f.loopAnswers(c.gc.EventLoop())
}

// execute runs the answer as a task on c's loop.
func (a *answer) execute() {
	if err := a.c.gc.EventLoop().Execute(context.Background(), a); err != nil {
		a.deliver(false) // the loop is gone
	}
}

func (a *answer) Run(context.Context) error {
	a.deliver(true)
	return nil
}

// deliver writes the answer (onLoop: on c's loop) and ends the call.
func (a *answer) deliver(onLoop bool) {
	s, c := a.s, a.c
	switch {
	case !onLoop || c.state.Load() == stateClosed:
		s.orphanWrite(c, a.bb.B) // the client may have half-closed, waiting for this
	case c.closeCode.Load() == 0:
		s.send(c, a.bb.B)
		if c.gc.OutboundBuffered() > s.cfg.MaxOutbound && s.closeOnLoop(c, codec.CodeSlowConsumer) == gnet.Close {
			_ = c.gc.Close()
		}
	}
	respPool.Put(a.bb)
	s.callDone(c)
	a.s, a.c, a.bb = nil, nil, nil
	answerPool.Put(a)
}

// classify turns a backend error into the client-facing code.
func (f *forwarder) classify(j *job, mm *methodMetrics, err error, ctx context.Context) (codec.Code, string, uint32) {
	kind, be := backend.Classify(err)
	switch {
	case kind == backend.KindLogical:
		code := be.Code
		if code < 1000 || code >= 2000 {
			code = codec.CodeLogical
		}
		return code, be.Msg, 0
	case kind == backend.KindBusy:
		return codec.CodeBusy, be.Msg, max(be.RetryAfter, 100)
	case kind == backend.KindUnavailable:
		mm.finalSysFail.Inc()
		return codec.CodeUnavailable, be.Msg, max(be.RetryAfter, 500)
	case ctx.Err() == context.DeadlineExceeded:
		mm.finalSysFail.Inc()
		return codec.CodeTimeout, "backend deadline exceeded", 500
	default:
		mm.finalSysFail.Inc()
		f.s.connLog.Warn("backend call failed", "method", j.m.name, "uid", j.uid, "err", err)
		return codec.CodeSystem, "backend failure", 1000
	}
}

// call runs one call for a caller that waits (HTTP): through the same queue,
// pool, deadlines, retries and metrics as calls from connections.
func (f *forwarder) call(ctx context.Context, uid uint64, device, method string, body []byte) callResult {
	now := time.Now()
	timeout := f.s.cfg.CallTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	m := f.method([]byte(method))
	if !f.admit(m, uid) {
		return callResult{code: codec.CodeBusy, msg: "overloaded: retry later", retryAfter: f.shedRetryAfter()}
	}
	j := &job{uid: uid, device: device, m: m, body: body,
		enqueued: now, deadline: now.Add(timeout), done: make(chan callResult, 1)}
	f.closeMu.RLock()
	if f.closed {
		f.closeMu.RUnlock()
		return callResult{code: codec.CodeUnavailable, msg: "server stopping", retryAfter: 1000}
	}
	f.busy.Add(1)
	select {
	case f.lanes[lane(m.prio)] <- j:
		f.closeMu.RUnlock()
	default:
		f.closeMu.RUnlock()
		f.busy.Add(-1)
		f.s.metrics.shed.WithLabelValues("queue_full").Inc()
		f.s.metrics.calls.WithLabelValues(m.m.Load().label, codec.CodeBusy.String()).Inc()
		return callResult{code: codec.CodeBusy, msg: "server busy", retryAfter: 200}
	}
	return <-j.done // the worker always answers, by the job's deadline at the latest
}
