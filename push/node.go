package push

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Sink is what a Node delivers into: the gateway worker.
type Sink interface {
	// Deliver receives one router message. It runs on the NATS dispatch
	// goroutine and must not block; d aliases a buffer the sink may keep.
	Deliver(d *Deliver)
	// Snapshot calls fn for every user connected here, with the number of
	// that user's connections. fn does not block.
	Snapshot(fn func(uid uint64, conns int))
	// Resync tells every connected client to sync: deliveries may have been
	// lost while the NATS link was down.
	Resync()
}

// NodeConfig configures a Node.
type NodeConfig struct {
	Node   string // required: this worker's node id (unique in the fleet)
	URLs   string // required: comma-separated NATS URLs
	Logger *slog.Logger
	Beacon time.Duration // liveness beacon period (default 2s)
	// Options for the NATS connection: credentials first of all
	// (ClientAuth.As(RoleGateway)).
	Options []nats.Option
}

// Node is the gateway-worker half of push: it subscribes to the worker's own
// node subject and to broadcasts, and publishes presence (deltas as users
// connect and leave, snapshots when a router asks, beacons).
//
// Concurrency: Online and Offline never block (the event loop calls them);
// they queue to one publisher goroutine, which keeps deltas and snapshots in
// order. A full queue drops the delta (counted): the next snapshot repairs it.
type Node struct {
	cfg  NodeConfig
	nc   *nats.Conn
	log  *slog.Logger
	sink Sink
	inc  uint64
	subj string

	events  chan presEvent
	snapReq chan struct{}
	stop    chan struct{}
	done    chan struct{}
	subs    []*nats.Subscription
	closing atomic.Bool

	Dropped    atomic.Uint64 // presence deltas dropped on a full queue
	Reconnects atomic.Uint64 // NATS reconnects seen
	BadMsgs    atomic.Uint64 // malformed router messages

	// Lost-push reports (lost.go): the queue, made on first use, and what a
	// full queue dropped.
	lost        chan lostRec
	lostOnce    sync.Once
	LostDropped atomic.Uint64
}

type presEvent struct {
	uid   uint64
	delta int16
}

// StartNode connects to NATS, subscribes and starts publishing presence.
func StartNode(cfg NodeConfig, sink Sink) (*Node, error) {
	if cfg.Node == "" || cfg.URLs == "" {
		return nil, errors.New("push: NodeConfig.Node and URLs are required")
	}
	if len(cfg.Node) > 255 {
		return nil, errors.New("push: node id longer than 255 bytes")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Beacon <= 0 {
		cfg.Beacon = 2 * time.Second
	}
	n := &Node{
		cfg: cfg, log: cfg.Logger, sink: sink, inc: rand.Uint64() | 1, subj: NodeSubject(cfg.Node),
		events: make(chan presEvent, 1<<16), snapReq: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	nc, err := Connect(cfg.URLs, "longlink-node "+cfg.Node, cfg.Logger, append(cfg.Options[:len(cfg.Options):len(cfg.Options)],
		nats.ReconnectHandler(func(*nats.Conn) {
			n.Reconnects.Add(1)
			n.log.Warn("push: NATS reconnected; resyncing presence and clients")
			n.requestSnapshot() // routers may have missed deltas
			sink.Resync()       // we may have missed deliveries
			// In a cluster our re-made subscriptions reach the other servers
			// a moment later; what was routed there meanwhile is lost too.
			time.AfterFunc(time.Second, func() {
				if !n.closing.Load() {
					sink.Resync()
				}
			})
		}))...)
	if err != nil {
		return nil, err
	}
	n.nc = nc
	for _, s := range []struct {
		subj string
		fn   nats.MsgHandler
	}{{n.subj, n.onDeliver}, {SubjectAll, n.onDeliver}, {SubjectResync, n.onResync}} {
		sub, err := nc.Subscribe(s.subj, s.fn)
		if err != nil {
			nc.Close()
			return nil, err
		}
		_ = sub.SetPendingLimits(1<<20, 256<<20)
		n.subs = append(n.subs, sub)
	}
	if ds, ok := sink.(DeviceSink); ok { // the offline sender asks which devices are here (devices.go)
		sub, err := nc.Subscribe(n.subj+devicesSuffix, func(m *nats.Msg) { answerDevices(m, ds) })
		if err != nil {
			nc.Close()
			return nil, err
		}
		n.subs = append(n.subs, sub)
	}
	if nc.IsConnected() { // else degraded: the subscriptions are sent when it connects
		if err := nc.FlushTimeout(5 * time.Second); err != nil {
			nc.Close()
			return nil, fmt.Errorf("push: NATS %s: %w", RedactURLs(cfg.URLs), err)
		}
	}
	n.requestSnapshot() // announce ourselves (and clear what a router knew of a previous us)
	go n.publisher()
	return n, nil
}

// Connect dials NATS with reconnects that never give up. Pass the
// connection's credentials among opts (ClientAuth.As(role)). An unreachable
// server is not an error: the connection keeps trying in the background
// (push is advisory) and this logs it, naming the address.
func Connect(urls, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	where := RedactURLs(urls)
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.IgnoreAuthErrorAbort(), // credentials may be fixed (or the secret created) while we retry
		nats.PingInterval(5 * time.Second),
		nats.ReconnectBufSize(64 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("push: NATS disconnected", "nats", where, "conn", name, "err", err)
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { // permission violations among them
			log.Error("push: NATS error", "nats", where, "conn", name, "err", err)
		}),
	}
	o := nats.GetDefaultOptions()
	for _, u := range strings.Split(urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			o.Servers = append(o.Servers, u)
		}
	}
	for _, opt := range append(base, opts...) {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("push: NATS %s: %w", where, err)
		}
	}
	if !strings.HasPrefix(o.InboxPrefix, "_INBOX_") { // ClientAuth.As sets it: nobody connects without deciding how
		return nil, fmt.Errorf("push: NATS %s: connection %q has no role (pass ClientAuth.As(role))", where, name)
	}
	nc, err := o.Connect()
	if err != nil {
		return nil, fmt.Errorf("push: NATS %s: %w", where, err)
	}
	if !nc.IsConnected() {
		log.Warn("push: NATS not reachable; retrying in the background (push is degraded meanwhile)", "nats", where, "conn", name, "err", nc.LastError())
	}
	return nc, nil
}

// Ready is nil while the node's NATS link is up, else the reason
// ("nats: disconnected <addr>").
func (n *Node) Ready() error { return connReady(n.nc, n.cfg.URLs) }

// Subject is the node subject this node listens on.
func (n *Node) Subject() string { return n.subj }

// Online records a new connection of uid. Never blocks.
func (n *Node) Online(uid uint64) { n.event(uid, 1) }

// Offline records a closed connection of uid. Never blocks.
func (n *Node) Offline(uid uint64) { n.event(uid, -1) }

func (n *Node) event(uid uint64, d int16) {
	select {
	case n.events <- presEvent{uid, d}:
	default:
		n.Dropped.Add(1)
		n.requestSnapshot()
	}
}

func (n *Node) requestSnapshot() {
	select {
	case n.snapReq <- struct{}{}:
	default:
	}
}

func (n *Node) onDeliver(m *nats.Msg) {
	d, err := ParseDeliver(m.Data)
	if err != nil {
		n.BadMsgs.Add(1)
		return
	}
	n.sink.Deliver(&d)
}

func (n *Node) onResync(m *nats.Msg) {
	if len(m.Data) == 0 || string(m.Data) == n.cfg.Node {
		n.requestSnapshot()
	}
}

const maxRecsPerMessage = 8192

// publisher is the one goroutine that publishes presence, in order.
func (n *Node) publisher() {
	defer close(n.done)
	beacon := time.NewTicker(n.cfg.Beacon)
	defer beacon.Stop()
	buf := make([]byte, 0, 64<<10)
	for {
		select {
		case <-n.stop:
			n.flushDeltas(buf)
			buf = AppendPresenceHeader(buf[:0], PresGoodbye, n.cfg.Node, n.inc, 0, 0)
			_ = n.nc.Publish(SubjectPresence, buf)
			return
		case ev := <-n.events:
			buf = n.deltas(buf, ev)
		case <-n.snapReq:
			buf = n.flushDeltas(buf)
			buf = n.snapshot(buf)
		case <-beacon.C:
			buf = AppendPresenceHeader(buf[:0], PresBeacon, n.cfg.Node, n.inc, 0, 0)
			_ = n.nc.Publish(SubjectPresence, buf)
		}
	}
}

// deltas publishes ev and whatever else is queued, in messages of at most
// maxRecsPerMessage records.
func (n *Node) deltas(buf []byte, ev presEvent) []byte {
	buf = AppendPresenceHeader(buf[:0], PresDelta, n.cfg.Node, n.inc, 0, 0)
	hdr := len(buf)
	buf = AppendPresenceRec(buf, ev.uid, ev.delta)
	count := 1
	for {
		select {
		case ev := <-n.events:
			buf = AppendPresenceRec(buf, ev.uid, ev.delta)
			count++
			if count < maxRecsPerMessage {
				continue
			}
		default:
		}
		binary.BigEndian.PutUint32(buf[hdr-4:], uint32(count))
		_ = n.nc.Publish(SubjectPresence, buf)
		if count < maxRecsPerMessage {
			return buf
		}
		buf = AppendPresenceHeader(buf[:0], PresDelta, n.cfg.Node, n.inc, 0, 0)
		count = 0
		select {
		case ev := <-n.events:
			buf = AppendPresenceRec(buf, ev.uid, ev.delta)
			count = 1
		default:
			return buf
		}
	}
}

func (n *Node) flushDeltas(buf []byte) []byte {
	select {
	case ev := <-n.events:
		return n.deltas(buf, ev)
	default:
		return buf
	}
}

// snapshot publishes every connected user in chunks; the first chunk tells
// routers to forget what they knew of this node. Deltas queued while the
// sessions are walked follow the snapshot, so a connection opened meanwhile
// may be counted twice: harmless (a notify too many to this node) and gone
// at the next snapshot.
func (n *Node) snapshot(buf []byte) []byte {
	type rec struct {
		uid uint64
		n   int
	}
	var recs []rec
	n.sink.Snapshot(func(uid uint64, conns int) { recs = append(recs, rec{uid, conns}) })
	for i := 0; i == 0 || i < len(recs); i += maxRecsPerMessage {
		end := min(i+maxRecsPerMessage, len(recs))
		var flags byte
		if i == 0 {
			flags |= SnapFirst
		}
		if end == len(recs) {
			flags |= SnapLast
		}
		buf = AppendPresenceHeader(buf[:0], PresSnapshot, n.cfg.Node, n.inc, flags, end-i)
		for _, r := range recs[i:end] {
			buf = AppendPresenceRec(buf, r.uid, int16(min(r.n, 32767)))
		}
		_ = n.nc.Publish(SubjectPresence, buf)
	}
	return buf
}

// Close says goodbye (routers drop this node's users at once) and
// disconnects. Safe to call twice.
func (n *Node) Close() {
	if n.closing.Swap(true) {
		return
	}
	for _, s := range n.subs {
		_ = s.Unsubscribe()
	}
	close(n.stop)
	<-n.done
	_ = n.nc.FlushTimeout(time.Second)
	n.nc.Close()
}
