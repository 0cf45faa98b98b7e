package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/push"
)

// pusher delivers notifies routed to this worker (push.Node) to its
// connections. Notifies are coalesced per (user, device, type) for
// Config.PushWindow; at the end of a window the flusher goroutine encodes the
// PUSH frames, groups them per event loop, and hands each loop one task
// (gnet EventLoop.Execute) that writes each connection's frames with one
// Write. On the loop the task drops versions a connection has already seen
// (so a client never sees a type go backwards on one connection) and closes
// connections whose outbound bytes pass Config.MaxOutbound (slow_consumer).
//
// Concurrency: Deliver runs on NATS goroutines; flush on the flusher
// goroutine (the session table is read under its shard locks, nothing is
// written to a connection there); loopBatch.Run on the connection's loop,
// which alone touches conn.push.
type pusher struct {
	s    *Server
	node *push.Node
	co   *push.Coalescer
	stop chan struct{}
	wg   sync.WaitGroup

	// Flusher goroutine only.
	batches []*loopBatch
	scratch []push.Pending
	cur     []push.Pending // entries of the user being visited
	visitFn func(*conn)
	free    chan *loopBatch

	delivered  prometheus.Counter
	coalesced  prometheus.Counter
	stale      prometheus.Counter
	slow       prometheus.Counter
	notifies   prometheus.Counter
	flushDelay prometheus.Observer
	lostN      prometheus.Counter // push_lost.go
}

// pushSeen is the highest version written per type on one connection.
// Allocated on a connection's first push; owned by its event loop. It stays
// 64 bytes (TestGuardBytesPerConnection): the offline path's bookkeeping
// (dirty, at; push_lost.go) lives in what was the padding of n.
type pushSeen struct {
	n     uint8
	dirty uint8  // bit i: typ[i] written and not yet confirmed (bit 7: one in more); push_lost.go
	at    uint32 // wheel tick of the newest write that set a dirty bit
	typ   [4]uint32
	ver   [4]uint64
	more  map[uint32]uint64
}

// fresh reports whether version is newer than what c has seen for typ, and
// records it if so. Type 0 ("sync everything") is always fresh.
func (p *pushSeen) fresh(typ uint32, version uint64) bool {
	if typ == 0 {
		return true
	}
	for i := range int(p.n) {
		if p.typ[i] == typ {
			if version <= p.ver[i] {
				return false
			}
			p.ver[i] = version
			p.dirty |= 1 << i
			return true
		}
	}
	if int(p.n) < len(p.typ) {
		p.typ[p.n], p.ver[p.n] = typ, version
		p.dirty |= 1 << p.n
		p.n++
		return true
	}
	if p.more == nil {
		p.more = map[uint32]uint64{}
	}
	if v, ok := p.more[typ]; ok && version <= v {
		return false
	}
	p.more[typ] = version
	p.dirty |= dirtyMore
	return true
}

// loopBatch is one window's frames for the connections of one event loop.
type loopBatch struct {
	p      *pusher
	el     gnet.EventLoop
	buf    []byte  // encoded frames, contiguous per item
	items  []pitem // one per connection
	frames []pframe
}

type pitem struct {
	c      *conn
	f0, f1 int32 // frames[f0:f1]
}

type pframe struct {
	off, end int32
	typ      uint32
	ver      uint64
}

func newPusher(s *Server) *pusher {
	if s.cfg.NATS == "" {
		return nil
	}
	p := &pusher{s: s, co: push.NewCoalescer(), stop: make(chan struct{}), free: make(chan *loopBatch, 64)}
	p.visitFn = p.visit
	p.delivered = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_delivered_total", Help: "PUSH frames written to connections."})
	p.coalesced = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_coalesced_total", Help: "Notifies merged into one already pending in the window."})
	p.stale = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_stale_total", Help: "PUSH frames not written: the connection had seen that version or newer."})
	p.slow = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_slow_closes_total", Help: "Connections closed as slow consumers by push delivery."})
	p.notifies = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_notifies_total", Help: "Notifies received from the router (per user)."})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "longlink_push_flush_delay_seconds", Help: "From the router receiving the API call to the flush of its window here.",
		Buckets: []float64{.001, .0025, .005, .01, .02, .03, .05, .1, .25, .5, 1}})
	p.flushDelay = h
	p.lostN = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_lost_reported_total", Help: "Pushes (newest per type) a closed connection may not have received, reported to the offline path (Config.PushLost)."})
	for _, c := range []prometheus.Collector{p.delivered, p.coalesced, p.stale, p.slow, p.notifies, h, p.lostN} {
		s.metrics.reg.MustRegister(c)
	}
	return p
}

func (p *pusher) start() error {
	if p == nil {
		return nil
	}
	n, err := push.StartNode(push.NodeConfig{Node: p.s.cfg.Node, URLs: p.s.cfg.NATS, Logger: p.s.log, Options: p.s.cfg.NATSOptions}, p)
	if err != nil {
		return err
	}
	p.node = n
	p.wg.Add(1)
	go p.flusher()
	return nil
}

func (p *pusher) close() {
	if p == nil || p.node == nil {
		return
	}
	p.node.Close()
	close(p.stop)
	p.wg.Wait()
}

// presence is called on the event loop when a connection authenticates or
// closes after authenticating.
func (p *pusher) presence(c *conn, online bool) {
	if p == nil || p.node == nil {
		return
	}
	if online {
		p.node.Online(c.uid)
	} else {
		p.node.Offline(c.uid)
	}
}

// Deliver implements push.Sink.
func (p *pusher) Deliver(d *push.Deliver) {
	switch d.Kind {
	case push.KindNotify:
		p.notifies.Add(float64(d.N()))
		if merged := p.co.AddDeliver(d); merged > 0 { // one lock per router message
			p.coalesced.Add(float64(merged))
		}
	case push.KindBroadcast:
		if p.co.AddBroadcast(d.Type, d.Version, d.Payload, d.SentNs) {
			p.coalesced.Inc()
		}
	}
}

// Snapshot implements push.Sink.
func (p *pusher) Snapshot(fn func(uid uint64, conns int)) {
	for i := range p.s.sessions.shards {
		sh := &p.s.sessions.shards[i]
		sh.mu.Lock()
		for uid, head := range sh.m {
			n := 0
			for c := head; c != nil; c = c.next {
				n++
			}
			fn(uid, n)
		}
		sh.mu.Unlock()
	}
}

// Resync implements push.Sink: a PUSH of type 0 tells clients to sync
// everything.
func (p *pusher) Resync() { p.co.AddBroadcast(0, 0, nil, time.Now().UnixNano()) }

func (p *pusher) flusher() {
	defer p.wg.Done()
	window := p.s.cfg.PushWindow
	t := time.NewTimer(window)
	t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.co.Ready():
		}
		t.Reset(window)
		select {
		case <-p.stop:
			t.Stop()
			return
		case <-t.C:
		}
		b := p.co.Take()
		p.flush(b)
		p.co.Recycle(b)
	}
}

// flush turns one window into per-loop tasks.
func (p *pusher) flush(b *push.Batch) {
	now := time.Now().UnixNano()
	p.scratch = b.EachUser(p.scratch, func(uid uint64, ents []push.Pending) {
		for i := range ents {
			if ents[i].SentNs > 0 {
				p.flushDelay.Observe(float64(now-ents[i].SentNs) / 1e9)
			}
		}
		p.cur = ents
		p.s.sessions.each(uid, "", p.visitFn)
	})
	if len(b.Broadcast) > 0 {
		p.cur = b.Broadcast
		for i := range p.s.sessions.shards {
			sh := &p.s.sessions.shards[i]
			sh.mu.Lock()
			for _, head := range sh.m {
				for c := head; c != nil; c = c.next {
					p.visit(c)
				}
			}
			sh.mu.Unlock()
		}
	}
	p.cur = nil
	for i, lb := range p.batches {
		if len(lb.items) > 0 {
			if err := lb.el.Execute(context.Background(), lb); err != nil {
				lb.reset()
				p.release(lb)
			}
		} else {
			p.release(lb)
		}
		p.batches[i] = nil
	}
	p.batches = p.batches[:0]
}

// visit appends the frames of p.cur meant for c to c's loop batch. Runs
// under a session shard lock: no blocking.
func (p *pusher) visit(c *conn) {
	var lb *loopBatch
	el := c.gc.EventLoop()
	for _, b := range p.batches {
		if b.el == el {
			lb = b
			break
		}
	}
	if lb == nil {
		lb = p.get(el)
		p.batches = append(p.batches, lb)
	}
	f0 := int32(len(lb.frames))
	for i := range p.cur {
		e := &p.cur[i]
		if e.Device != "" && e.Device != c.device {
			continue
		}
		off := int32(len(lb.buf))
		lb.buf = appendPush(lb.buf, e.Type, e.Version, e.Payload)
		lb.frames = append(lb.frames, pframe{off: off, end: int32(len(lb.buf)), typ: e.Type, ver: e.Version})
	}
	if f1 := int32(len(lb.frames)); f1 > f0 {
		lb.items = append(lb.items, pitem{c: c, f0: f0, f1: f1})
	}
}

func (p *pusher) get(el gnet.EventLoop) *loopBatch {
	select {
	case lb := <-p.free:
		lb.el = el
		return lb
	default:
		return &loopBatch{p: p, el: el}
	}
}

func (p *pusher) release(lb *loopBatch) {
	lb.el = nil
	select {
	case p.free <- lb:
	default:
	}
}

func (lb *loopBatch) reset() {
	clear(lb.items) // drop conn references
	lb.items = lb.items[:0]
	lb.frames = lb.frames[:0]
	lb.buf = lb.buf[:0]
}

// Run writes the batch on its event loop (gnet.Runnable).
func (lb *loopBatch) Run(context.Context) error {
	p := lb.p
	s := p.s
	delivered, stale := 0, 0
	lost, now := s.cfg.PushLost, s.wheel.Now() // push_lost.go
	for _, it := range lb.items {
		c := it.c
		if c.state.Load() != stateAuthed || c.closeCode.Load() != 0 {
			continue
		}
		if c.push == nil {
			c.push = &pushSeen{}
		}
		if lost {
			p.confirm(c)
		}
		frames := lb.frames[it.f0:it.f1]
		fresh := 0
		for i := range frames {
			if c.push.fresh(frames[i].typ, frames[i].ver) {
				fresh++
			} else {
				frames[i].end = frames[i].off // mark: skip
			}
		}
		stale += len(frames) - fresh
		if fresh == 0 {
			continue
		}
		delivered += fresh
		if lost {
			c.push.at = now
		}
		if fresh == len(frames) {
			writeFrames(c, lb.buf[frames[0].off:frames[len(frames)-1].end])
		} else {
			for _, f := range frames {
				if f.end > f.off {
					writeFrames(c, lb.buf[f.off:f.end])
				}
			}
		}
		if c.gc.OutboundBuffered() > s.cfg.MaxOutbound {
			p.slow.Inc()
			if s.closeOnLoop(c, codec.CodeSlowConsumer) == gnet.Close {
				_ = c.gc.Close()
			}
		}
	}
	if delivered > 0 {
		p.delivered.Add(float64(delivered))
	}
	if stale > 0 {
		p.stale.Add(float64(stale))
	}
	lb.reset()
	p.release(lb)
	return nil
}

// writeFrames writes whole protocol frames to c, on c's loop: one write, in
// one binary message on WebSocket.
func writeFrames(c *conn, b []byte) {
	if st := c.sec.Load(); st != nil {
		writeSealed(c, st, b) // one record for the batch
		return
	}
	if c.ws {
		var h [10]byte
		_, _ = c.gc.Writev([][]byte{wsHeader(h[:0], 0x2, len(b)), b})
		return
	}
	_, _ = c.gc.Write(b)
}

// appendPush appends a PUSH frame carrying Push{type, version, payload}.
func appendPush(dst []byte, typ uint32, version uint64, payload []byte) []byte {
	size := 0
	if typ != 0 {
		size += 1 + protowire.SizeVarint(uint64(typ))
	}
	if version != 0 {
		size += 1 + protowire.SizeVarint(version)
	}
	if len(payload) > 0 {
		size += 1 + protowire.SizeBytes(len(payload))
	}
	dst = codec.AppendHeader(dst, codec.CmdPush, 0, 0, size)
	if typ != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(typ))
	}
	if version != 0 {
		dst = protowire.AppendTag(dst, 2, protowire.VarintType)
		dst = protowire.AppendVarint(dst, version)
	}
	if len(payload) > 0 {
		dst = protowire.AppendTag(dst, 3, protowire.BytesType)
		dst = protowire.AppendBytes(dst, payload)
	}
	return dst
}

// Registerer is where extra series (the push router's, in a one-process
// gateway) can be added to this worker's /metrics.
func (s *Server) Registerer() prometheus.Registerer { return s.metrics.reg }
