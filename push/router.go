package push

import (
	"cmp"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
)

// RouterConfig configures a Router.
type RouterConfig struct {
	Conn          *nats.Conn    // required
	BroadcastRate float64       // broadcasts per second fleet-wide per router (default 10)
	NodeTimeout   time.Duration // a node silent this long is dropped (default 10s; nodes beacon every 2s)
	Grace         time.Duration // notifies are replayed to a node whose user came online this recently (default 2s; <0 disables)
	Logger        *slog.Logger
	Registerer    prometheus.Registerer // optional
}

// ErrRateLimited is returned by Broadcast when over the configured rate.
var ErrRateLimited = errors.New("push: broadcast rate exceeded")

// ErrInvalid wraps request validation failures.
var ErrInvalid = errors.New("push: invalid request")

// Router is the routing half of push: it keeps the user→node Registry from
// presence messages and turns API calls into one message per node that holds
// a target user (never one per gateway: users not in the registry cost
// nothing beyond the lookup).
//
// Concurrency: Notify, Multicast and Broadcast are goroutine-safe and may run
// concurrently (gRPC and NATS ingress call them); presence messages are
// applied in order on the NATS subscription goroutine.
type Router struct {
	cfg RouterConfig
	nc  *nats.Conn
	log *slog.Logger
	reg *Registry
	lim *rate.Limiter

	nodesMu sync.RWMutex
	byName  map[string]*nodeInfo
	byIdx   []*nodeInfo

	recentMu sync.Mutex
	recent   [2]*Batch // generations of recently routed notifies, for the presence race

	offline atomic.Pointer[offlineHook] // SetOffline; nil: notifies to absent devices are dropped

	subs []*nats.Subscription
	stop chan struct{}
	wg   sync.WaitGroup
	bufs sync.Pool

	m routerMetrics
}

type nodeInfo struct {
	idx      uint16
	name     string
	subject  string
	inc      atomic.Uint64 // the node process's incarnation; 0 = unknown
	lastSeen atomic.Int64  // unix ns
	resyncAt time.Time     // last resync asked of it (presence goroutine only)
}

type routerMetrics struct {
	requests  *prometheus.CounterVec
	routed    prometheus.Counter
	offline   prometheus.Counter
	nodeMsgs  prometheus.Counter
	replayed  prometheus.Counter
	rejected  *prometheus.CounterVec
	presence  *prometheus.CounterVec
	nodeDrops prometheus.Counter
	lost      prometheus.Counter // lost.go
	all       []prometheus.Collector
}

// NewRouter subscribes to presence and the NATS ingress subjects and asks
// every node for a snapshot.
func NewRouter(cfg RouterConfig) (*Router, error) {
	if cfg.Conn == nil {
		return nil, errors.New("push: RouterConfig.Conn is required")
	}
	if cfg.BroadcastRate <= 0 {
		cfg.BroadcastRate = 10
	}
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = 10 * time.Second
	}
	if cfg.Grace == 0 {
		cfg.Grace = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Router{
		cfg: cfg, nc: cfg.Conn, log: cfg.Logger, reg: NewRegistry(),
		lim:    rate.NewLimiter(rate.Limit(cfg.BroadcastRate), max(1, int(cfg.BroadcastRate))),
		byName: map[string]*nodeInfo{},
		recent: [2]*Batch{newBatch(), newBatch()},
		stop:   make(chan struct{}),
	}
	r.bufs.New = func() any { b := make([]byte, 0, 2048); return &b }
	r.initMetrics()
	sub := func(s *nats.Subscription, err error) error {
		if err == nil {
			r.subs = append(r.subs, s)
		}
		return err
	}
	err := errors.Join(
		sub(r.nc.Subscribe(SubjectPresence, r.onPresence)),
		sub(r.nc.QueueSubscribe(SubjectNotify, routerQueue, r.onNotify)),
		sub(r.nc.QueueSubscribe(SubjectMulticast, routerQueue, r.onMulticast)),
		sub(r.nc.QueueSubscribe(SubjectBroadcast, routerQueue, r.onBroadcast)),
		sub(r.nc.QueueSubscribe(SubjectDevices, routerQueue, r.onDevices)),
		sub(r.nc.QueueSubscribe(SubjectLost, routerQueue, r.onLost)), // lost.go
	)
	if err == nil {
		for _, s := range r.subs {
			_ = s.SetPendingLimits(1<<20, 256<<20)
		}
		if r.nc.IsConnected() { // else degraded: sent on connect
			err = r.nc.FlushTimeout(5 * time.Second)
		}
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	_ = r.nc.Publish(SubjectResync, nil)
	r.wg.Add(1)
	go r.sweep()
	return r, nil
}

func (r *Router) initMetrics() {
	r.m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_push_requests_total", Help: "Push API requests by kind (notify, multicast, broadcast) and ingress (grpc, nats)."}, []string{"kind", "ingress"})
	r.m.routed = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_users_routed_total", Help: "Target users found online and routed to their nodes."})
	r.m.offline = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_users_offline_total", Help: "Target users not connected anywhere (dropped: they sync on connect)."})
	r.m.nodeMsgs = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_node_messages_total", Help: "Messages published to node subjects."})
	r.m.replayed = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_replayed_total", Help: "Recent notifies replayed to a node a user just connected to."})
	r.m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_push_rejected_total", Help: "Push requests refused, by reason."}, []string{"reason"})
	r.m.presence = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_push_presence_messages_total", Help: "Presence messages applied, by kind."}, []string{"kind"})
	r.m.nodeDrops = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_node_drops_total", Help: "Times a node's users were dropped from the registry (restart, goodbye, silence)."})
	r.m.lost = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_push_lost_total", Help: "Pushes reported by workers as possibly unreceived on a closed connection (newest per type), handed to the offline path."})
	users := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "longlink_push_registry_users", Help: "Users in the router's user→node registry."}, func() float64 { return float64(r.reg.Users()) })
	// Known label values at 0 from start-up (dashboards show 0, not "No data").
	for _, kind := range []string{"notify", "multicast", "broadcast"} {
		for _, in := range []string{"grpc", "nats"} {
			r.m.requests.WithLabelValues(kind, in)
		}
	}
	for _, reason := range []string{"invalid", "broadcast_rate", "nats"} {
		r.m.rejected.WithLabelValues(reason)
	}
	for _, kind := range presKind {
		r.m.presence.WithLabelValues(kind)
	}
	r.m.presence.WithLabelValues("malformed")
	r.m.all = []prometheus.Collector{r.m.requests, r.m.routed, r.m.offline, r.m.nodeMsgs, r.m.replayed, r.m.rejected, r.m.presence, r.m.nodeDrops, r.m.lost, users}
	if rg := r.cfg.Registerer; rg != nil {
		for _, c := range r.m.all {
			_ = rg.Register(c)
		}
	}
}

// Collectors returns the router's Prometheus series, to register wherever
// the host's metrics are served.
func (r *Router) Collectors() []prometheus.Collector { return r.m.all }

// Registry exposes the user→node table (tests, status).
func (r *Router) Registry() *Registry { return r.reg }

// Close unsubscribes and stops the sweeper. The NATS connection stays open.
func (r *Router) Close() {
	for _, s := range r.subs {
		_ = s.Unsubscribe()
	}
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.wg.Wait()
}

// Resync asks every node for a snapshot (after the router's own NATS link
// came back, presence messages may have been lost).
func (r *Router) Resync() { _ = r.nc.Publish(SubjectResync, nil) }

func validate(device string, payload []byte) error {
	if len(payload) > MaxPayload {
		return errors.Join(ErrInvalid, errors.New("payload over 1 KiB"))
	}
	if len(device) > maxDevice {
		return errors.Join(ErrInvalid, errors.New("device id too long"))
	}
	return nil
}

// Notify routes "type reached version" to every node holding uid (only the
// given device if device is not empty).
func (r *Router) Notify(uid uint64, device string, typ uint32, version uint64, payload []byte) (*pb.PushReply, error) {
	if err := validate(device, payload); err != nil {
		r.m.rejected.WithLabelValues("invalid").Inc()
		return nil, err
	}
	now := time.Now().UnixNano()
	var nodes [8]uint16
	found := r.reg.Lookup(uid, nodes[:0])
	r.remember(uid, device, typ, version, payload, now)
	if h := r.offline.Load(); h != nil {
		h.Notified(uid, device, typ, version, payload, len(found) > 0)
	}
	rep := &pb.PushReply{}
	if len(found) == 0 {
		r.m.offline.Inc()
		rep.Offline = 1
		return rep, nil
	}
	r.m.routed.Inc()
	rep.Routed = 1
	one := [1]uint64{uid}
	for _, n := range found {
		r.publish(n, KindNotify, typ, version, now, device, payload, one[:])
		rep.Nodes++
	}
	return rep, nil
}

type nodeUID struct {
	node uint16
	uid  uint64
}

// maxUIDsPerMessage keeps node messages well under NATS's 1 MiB payload limit.
const maxUIDsPerMessage = 32768

// Multicast routes one notify to many users (every device): one message per
// node holding any of them.
func (r *Router) Multicast(uids []uint64, typ uint32, version uint64, payload []byte) (*pb.PushReply, error) {
	if err := validate("", payload); err != nil {
		r.m.rejected.WithLabelValues("invalid").Inc()
		return nil, err
	}
	now := time.Now().UnixNano()
	pairs := make([]nodeUID, 0, len(uids))
	var nodes [8]uint16
	rep := &pb.PushReply{}
	h := r.offline.Load()
	for _, u := range uids {
		found := r.reg.Lookup(u, nodes[:0])
		r.remember(u, "", typ, version, payload, now)
		if h != nil {
			h.Notified(u, "", typ, version, payload, len(found) > 0)
		}
		if len(found) == 0 {
			rep.Offline++
			continue
		}
		rep.Routed++
		for _, n := range found {
			pairs = append(pairs, nodeUID{n, u})
		}
	}
	r.m.offline.Add(float64(rep.Offline))
	r.m.routed.Add(float64(rep.Routed))
	slices.SortFunc(pairs, func(a, b nodeUID) int { return cmp.Compare(a.node, b.node) })
	list := make([]uint64, 0, min(len(pairs), maxUIDsPerMessage))
	for i := 0; i < len(pairs); {
		j := i
		list = list[:0]
		for j < len(pairs) && pairs[j].node == pairs[i].node && len(list) < maxUIDsPerMessage {
			list = append(list, pairs[j].uid)
			j++
		}
		r.publish(pairs[i].node, KindNotify, typ, version, now, "", payload, list)
		rep.Nodes++
		i = j
	}
	return rep, nil
}

// Broadcast notifies everyone connected to any node, within the rate limit.
func (r *Router) Broadcast(typ uint32, version uint64, payload []byte) (*pb.PushReply, error) {
	if err := validate("", payload); err != nil {
		r.m.rejected.WithLabelValues("invalid").Inc()
		return nil, err
	}
	if !r.lim.Allow() {
		r.m.rejected.WithLabelValues("broadcast_rate").Inc()
		return nil, ErrRateLimited
	}
	bp := r.bufs.Get().(*[]byte)
	*bp = AppendDeliver((*bp)[:0], KindBroadcast, typ, version, time.Now().UnixNano(), "", payload, nil)
	err := r.nc.Publish(SubjectAll, *bp)
	r.bufs.Put(bp)
	r.nodesMu.RLock()
	n := len(r.byName)
	r.nodesMu.RUnlock()
	r.m.nodeMsgs.Inc()
	return &pb.PushReply{Nodes: uint32(n)}, err
}

func (r *Router) publish(node uint16, kind byte, typ uint32, version uint64, sentNs int64, device string, payload []byte, uids []uint64) {
	r.nodesMu.RLock()
	var subj string
	if int(node) < len(r.byIdx) {
		subj = r.byIdx[node].subject
	}
	r.nodesMu.RUnlock()
	if subj == "" {
		return
	}
	bp := r.bufs.Get().(*[]byte)
	*bp = AppendDeliver((*bp)[:0], kind, typ, version, sentNs, device, payload, uids)
	if err := r.nc.Publish(subj, *bp); err != nil {
		r.m.rejected.WithLabelValues("nats").Inc()
	}
	r.bufs.Put(bp)
	r.m.nodeMsgs.Inc()
}

// remember records a routed notify for Grace, so a node the user connects to
// while the notify is in flight still gets it (presence travels separately
// from notifies: without this, a user could sync just before a notify that
// the router routes just before it hears the user is online).
func (r *Router) remember(uid uint64, device string, typ uint32, version uint64, payload []byte, now int64) {
	if r.cfg.Grace < 0 {
		return
	}
	r.recentMu.Lock()
	if r.recent[0].Len() < 1<<20 {
		r.recent[0].add(uid, []byte(device), typ, version, payload, now)
	}
	r.recentMu.Unlock()
}

// replay sends what was recently routed for uid to node.
func (r *Router) replay(uid uint64, node uint16) {
	if r.cfg.Grace < 0 {
		return
	}
	var found []Pending
	r.recentMu.Lock()
	for _, b := range r.recent {
		if i, ok := b.users[uid]; ok {
			for ; i >= 0; i = b.ents[i].next {
				found = append(found, b.ents[i])
			}
		}
	}
	r.recentMu.Unlock()
	one := [1]uint64{uid}
	for _, p := range found {
		r.publish(node, KindNotify, p.Type, p.Version, p.SentNs, p.Device, p.Payload, one[:])
		r.m.replayed.Inc()
	}
}

// node returns (creating) the entry for a node name. Presence goroutine only
// writes; readers hold nodesMu.
func (r *Router) node(name []byte) *nodeInfo {
	r.nodesMu.RLock()
	n := r.byName[string(name)]
	r.nodesMu.RUnlock()
	if n != nil {
		return n
	}
	if len(r.byIdx) >= 65535 {
		return nil
	}
	n = &nodeInfo{idx: uint16(len(r.byIdx)), name: string(name), subject: NodeSubject(string(name))}
	r.nodesMu.Lock()
	r.byName[n.name] = n
	r.byIdx = append(r.byIdx, n)
	r.nodesMu.Unlock()
	return n
}

var presKind = map[byte]string{PresDelta: "delta", PresSnapshot: "snapshot", PresBeacon: "beacon", PresGoodbye: "goodbye"}

func (r *Router) onPresence(m *nats.Msg) {
	p, err := ParsePresence(m.Data)
	if err != nil {
		r.m.presence.WithLabelValues("malformed").Inc()
		return
	}
	r.m.presence.WithLabelValues(presKind[p.Kind]).Inc()
	n := r.node(p.Node)
	if n == nil {
		return
	}
	n.lastSeen.Store(time.Now().UnixNano())
	if p.Kind == PresGoodbye {
		r.dropNode(n)
		return
	}
	if inc := n.inc.Load(); p.Incarnation != inc {
		if inc != 0 {
			r.dropNode(n) // the node restarted: what we knew is void
		}
		n.inc.Store(p.Incarnation)
		if !(p.Kind == PresSnapshot && p.Flags&SnapFirst != 0) {
			r.askSnapshot(n) // we came in late: learn the node's users
		}
	}
	switch p.Kind {
	case PresDelta:
		for i := 0; i < p.N(); i++ {
			uid, d := p.Rec(i)
			r.reg.Add(uid, n.idx, int(d))
			if d > 0 {
				r.replay(uid, n.idx)
			} else if d < 0 {
				r.offlineLeft(uid) // devices.go
			}
		}
	case PresSnapshot:
		if p.Flags&SnapFirst != 0 {
			r.reg.DropNode(n.idx)
			r.offlineReset()
		}
		for i := 0; i < p.N(); i++ {
			uid, c := p.Rec(i)
			r.reg.Set(uid, n.idx, int(c))
		}
	}
}

func (r *Router) askSnapshot(n *nodeInfo) {
	if time.Since(n.resyncAt) < time.Second {
		return
	}
	n.resyncAt = time.Now()
	_ = r.nc.Publish(SubjectResync, []byte(n.name))
}

func (r *Router) dropNode(n *nodeInfo) {
	r.reg.DropNode(n.idx)
	r.offlineReset()
	n.inc.Store(0)
	r.m.nodeDrops.Inc()
}

// sweep drops silent nodes and ages the recent-notify generations.
func (r *Router) sweep() {
	defer r.wg.Done()
	tick := time.NewTicker(max(r.cfg.Grace/2, 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
		r.recentMu.Lock()
		old := r.recent[1]
		old.reset()
		r.recent[1], r.recent[0] = r.recent[0], old
		r.recentMu.Unlock()

		cut := time.Now().Add(-r.cfg.NodeTimeout).UnixNano()
		r.nodesMu.RLock()
		var silent []*nodeInfo
		for _, n := range r.byIdx {
			if n.inc.Load() != 0 && n.lastSeen.Load() < cut {
				silent = append(silent, n)
			}
		}
		r.nodesMu.RUnlock()
		for _, n := range silent {
			// Runs beside onPresence: a late beacon may re-add the node;
			// it then sends a snapshot, which rebuilds its users.
			r.log.Warn("push: node silent; dropping its users", "node", n.name)
			n.inc.Store(0)
			r.reg.DropNode(n.idx)
			r.offlineReset()
			r.m.nodeDrops.Inc()
		}
	}
}

// NATS ingress: protobuf requests; a reply subject gets a PushReply.

func (r *Router) reply(m *nats.Msg, rep *pb.PushReply, err error) {
	if m.Reply == "" {
		return
	}
	if err != nil {
		_ = m.Respond([]byte("error: " + err.Error()))
		return
	}
	b, _ := proto.Marshal(rep)
	_ = m.Respond(b)
}

func (r *Router) onNotify(m *nats.Msg) {
	r.m.requests.WithLabelValues("notify", "nats").Inc()
	var q pb.NotifyRequest
	if err := proto.Unmarshal(m.Data, &q); err != nil {
		r.m.rejected.WithLabelValues("malformed").Inc()
		r.reply(m, nil, err)
		return
	}
	rep, err := r.Notify(q.Uid, q.Device, q.Type, q.Version, q.Payload)
	r.reply(m, rep, err)
}

func (r *Router) onMulticast(m *nats.Msg) {
	r.m.requests.WithLabelValues("multicast", "nats").Inc()
	var q pb.MulticastRequest
	if err := proto.Unmarshal(m.Data, &q); err != nil {
		r.m.rejected.WithLabelValues("malformed").Inc()
		r.reply(m, nil, err)
		return
	}
	rep, err := r.Multicast(q.Uids, q.Type, q.Version, q.Payload)
	r.reply(m, rep, err)
}

func (r *Router) onBroadcast(m *nats.Msg) {
	r.m.requests.WithLabelValues("broadcast", "nats").Inc()
	var q pb.BroadcastRequest
	if err := proto.Unmarshal(m.Data, &q); err != nil {
		r.m.rejected.WithLabelValues("malformed").Inc()
		r.reply(m, nil, err)
		return
	}
	rep, err := r.Broadcast(q.Type, q.Version, q.Payload)
	r.reply(m, rep, err)
}

// ForgetNode drops a node's users at once (the fleet view saw its host
// leave, docs/fleet.md), instead of waiting for NodeTimeout. A node that
// is in fact alive re-announces itself and sends a snapshot.
func (r *Router) ForgetNode(name string) bool {
	r.nodesMu.RLock()
	n := r.byName[name]
	r.nodesMu.RUnlock()
	if n == nil || n.inc.Load() == 0 {
		return false
	}
	r.log.Warn("push: node's host left the fleet; dropping its users", "node", name)
	r.dropNode(n)
	return true
}
