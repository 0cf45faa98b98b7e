// Package logic is longlink's reference IM logic: the default backend the
// gateway fronts (embedded in the gateway, or served over gRPC by
// `longlink logic`). It owns WeChat's data sync protocol and the data it
// syncs: per-user change logs with monotonically increasing versions
// (messages, contacts, profile), signed SyncKeys, store-and-forward 1:1
// messages, groups of up to 500 members with asynchronous write diffusion,
// notifies to connected devices, and trimming of delivered messages. See
// docs/logic.md.
//
// Concurrency contract: every method of Logic is goroutine-safe. Writes go
// through Store.Update, which serialises (and may coalesce) transactions, so
// each user's versions are assigned in commit order and a sync never sees a
// gap. Three kinds of background goroutines run until Close: one fan-out
// worker (group write diffusion, in queue order), the notify senders, and the
// trimmer that persists delivery confirmations and trims.
package logic

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// Logical error codes of the reference logic (docs/logic.md).
const (
	CodeBadArgument   codec.Code = 1100 // a malformed or invalid request body
	CodeTooLarge      codec.Code = 1101 // a text or field over its limit
	CodeBadSyncKey    codec.Code = 1102 // forged, corrupt, or another user's SyncKey
	CodeFutureSyncKey codec.Code = 1103 // a SyncKey ahead of the server's data
	CodeGroupTooLarge codec.Code = 1104 // a group would exceed MaxGroup members
	CodeNoGroup       codec.Code = 1105 // no such group
	CodeNotMember     codec.Code = 1106 // the caller is not a member of the group
	CodeNotContact    codec.Code = 1107 // contact.remove of someone not in the list
)

// Methods served (besides the gateway's test methods echo and time).
const (
	MethodSend        = "msg.send"
	MethodSendGroup   = "msg.send_group"
	MethodSync        = "sync"
	MethodContactAdd  = "contact.add"
	MethodContactDel  = "contact.remove"
	MethodProfileGet  = "profile.get"
	MethodProfileSet  = "profile.set"
	MethodGroupCreate = "group.create"
	MethodGroupAdd    = "group.add"
	// MethodInfo answers InfoReply (JSON) to internal callers (uid 0): the
	// gateway's pool compares the store ids of its instances.
	MethodInfo = "logic.info"
)

// InfoReply is the body of MethodInfo.
type InfoReply struct {
	StoreID string `json:"store_id"` // random, created once in the store
	Store   string `json:"store"`    // "bbolt" or "jetstream"
}

// Notifier tells a user's connected devices that a data type reached a
// version (push/: in-process router, NATS, or the gRPC PushService). An
// empty device means every device of the user. Notifies are advisory: the
// sync protocol makes delivery lossless, so a failed notify is only counted.
type Notifier interface {
	Notify(ctx context.Context, uid uint64, device string, typ uint32, version uint64, payload []byte) error
}

// Config configures a Logic. Zero fields take the defaults noted.
type Config struct {
	Notifier Notifier // nil: no notifies (clients must poll with sync)

	// Retention is how long a delivered message is kept after it was written
	// (for new devices' history); it is trimmed once every device that
	// synced within DeviceTTL has confirmed it and it is older than this.
	// Default 72h; negative: trim as soon as it is confirmed.
	Retention    time.Duration
	DeviceTTL    time.Duration // default 30 days
	DedupTTL     time.Duration // client_msg_id dedup window (default 24h)
	TrimInterval time.Duration // confirmations are persisted and trimmed this often (default 1s)

	MaxText      int // bytes of a message text (default 4096)
	MaxGroup     int // members of a group (default 500)
	DefaultLimit int // sync page (default 100)
	MaxLimit     int // largest sync page (default 500)

	Logger *slog.Logger
}

func (c *Config) fill() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Retention, 72*time.Hour)
	def(&c.DeviceTTL, 30*24*time.Hour)
	def(&c.DedupTTL, 24*time.Hour)
	def(&c.TrimInterval, time.Second)
	defi := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	defi(&c.MaxText, 4096)
	defi(&c.MaxGroup, 500)
	defi(&c.DefaultLimit, 100)
	defi(&c.MaxLimit, 500)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// maxSyncBytes bounds the items of one sync page (a single item may exceed it).
const maxSyncBytes = 48 << 10

// Logic is the reference IM logic. It implements backend.Backend.
type Logic struct {
	cfg     Config
	store   Store
	secret  []byte
	storeID string
	methods *backend.Embedded
	log     *slog.Logger

	// A user's connected devices. Nearly every online user has one: it
	// lives in pres's slot, with no allocation of its own; the second and
	// later ones go to more. Node names are interned (a fleet has a few).
	// Per online user this is one 40-byte map slot (about 60 B at the
	// map's average load) where a slice cost a 32-byte slot and a 48-byte
	// array.
	presMu sync.Mutex
	pres   map[uint64]devConn
	more   map[uint64][]devConn
	nodes  map[string]uint32 // node name → its index in devConn

	confMu sync.Mutex
	conf   map[confKey]uint64

	notes  chan note
	kick   chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool

	m metrics
}

type devConn struct {
	device string
	conn   uint64
	node   uint32 // the node's index (Logic.nodes)
}

type confKey struct {
	uid    uint64
	device string
}

type note struct {
	uid    uint64
	device string
	typ    uint8
	ver    uint64
}

type metrics struct {
	fanoutJobs, fanoutWrites, trimmed prometheus.Counter
	notifies                          *prometheus.CounterVec
	fanoutLag                         prometheus.Histogram
	all                               []prometheus.Collector
}

// Open opens (creating) the bbolt store at path and starts a Logic on it.
func Open(path string, cfg Config) (*Logic, error) {
	st, err := OpenBolt(path)
	if err != nil {
		return nil, err
	}
	l, err := New(st, cfg)
	if err != nil {
		st.Close()
		return nil, err
	}
	return l, nil
}

// New starts a Logic on store; Close closes the store. Group messages
// accepted but not yet diffused before a crash are diffused now.
func New(store Store, cfg Config) (*Logic, error) {
	cfg.fill()
	l := &Logic{
		cfg: cfg, store: store, log: cfg.Logger, methods: backend.NewEmbedded(),
		pres:  map[uint64]devConn{},
		more:  map[uint64][]devConn{},
		nodes: map[string]uint32{},
		conf:  map[confKey]uint64{},
		notes: make(chan note, 1<<16),
		kick:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
	}
	// The secret and the store id are created once, by the first instance
	// to start on the store (a concurrent first start of another instance
	// conflicts and re-reads them).
	err := store.UpdateNow(func(tx Tx) error {
		secret, err := randomOnce(tx, "synckey_secret", 32)
		if err != nil {
			return err
		}
		id, err := randomOnce(tx, "store_id", 16)
		l.secret, l.storeID = secret, hex.EncodeToString(id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("logic: init: %w", err)
	}
	l.initMetrics()
	for name, h := range map[string]backend.Handler{
		MethodSend: l.send, MethodSendGroup: l.sendGroup, MethodSync: l.sync,
		MethodContactAdd: l.contact(false), MethodContactDel: l.contact(true),
		MethodProfileGet: l.profileGet, MethodProfileSet: l.profileSet,
		MethodGroupCreate: l.groupCreate, MethodGroupAdd: l.groupAdd,
		MethodInfo: l.info,
	} {
		l.methods.Handle(name, h)
	}
	l.wg.Add(2)
	go l.fanoutLoop()
	go l.trimLoop()
	for i := 0; i < 4; i++ {
		l.wg.Add(1)
		go l.notifyLoop()
	}
	l.kickFanout() // diffuse what a crash left in the queue
	return l, nil
}

// randomOnce returns meta value name, creating it with n random bytes.
func randomOnce(tx Tx, name string, n int) ([]byte, error) {
	if v := tx.Get(TableMeta, 0, []byte(name)); len(v) == n {
		return append([]byte(nil), v...), nil
	}
	v := make([]byte, n)
	if _, err := rand.Read(v); err != nil {
		return nil, err
	}
	return v, tx.Put(TableMeta, 0, []byte(name), v)
}

func (l *Logic) initMetrics() {
	l.m.fanoutJobs = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_logic_fanout_jobs_total", Help: "Group messages diffused into their members' inboxes."})
	l.m.fanoutWrites = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_logic_fanout_writes_total", Help: "Inbox writes made by group write diffusion."})
	l.m.trimmed = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_logic_trimmed_total", Help: "Delivered messages trimmed."})
	l.m.notifies = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "longlink_logic_notifies_total", Help: "Notifies by result (sent, failed, dropped when the queue was full)."}, []string{"result"})
	l.m.fanoutLag = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "longlink_logic_fanout_lag_seconds", Help: "From a group message's acceptance to its diffusion.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	l.m.all = []prometheus.Collector{l.m.fanoutJobs, l.m.fanoutWrites, l.m.trimmed, l.m.notifies, l.m.fanoutLag}
}

// StoreID is the store's id: random, created once in the store, so every
// instance on one store announces the same id and instances on different
// stores (two bbolt files) announce different ones.
func (l *Logic) StoreID() string { return l.storeID }

func (l *Logic) info(_ context.Context, r *backend.Request) ([]byte, error) {
	if r.UID != 0 {
		return nil, backend.Logical(codec.CodeUnknownMethod, "unknown method "+MethodInfo)
	}
	kind := "bbolt"
	if _, ok := l.store.(*jsStore); ok {
		kind = "jetstream"
	}
	return json.Marshal(InfoReply{StoreID: l.storeID, Store: kind})
}

// Collectors returns the logic's Prometheus collectors.
func (l *Logic) Collectors() []prometheus.Collector { return l.m.all }

// Call implements backend.Backend.
func (l *Logic) Call(ctx context.Context, req *backend.Request) ([]byte, error) {
	if l.closed.Load() {
		return nil, errClosed
	}
	return l.methods.Call(ctx, req)
}

// Online implements backend.Backend: the device's notifies go to node.
func (l *Logic) Online(_ context.Context, p backend.Presence) error {
	l.presMu.Lock()
	defer l.presMu.Unlock()
	dc := devConn{device: p.Device, conn: p.ConnID, node: l.nodeIndex(p.Node)}
	first, ok := l.pres[p.UID]
	if !ok || first.device == p.Device {
		if ok {
			dc.device = first.device // keep the string already held
		}
		l.pres[p.UID] = dc
		return nil
	}
	d := l.more[p.UID]
	for i := range d {
		if d[i].device == p.Device {
			d[i] = dc
			return nil
		}
	}
	l.more[p.UID] = append(d, dc)
	return nil
}

// nodeIndex interns a gateway node's name. Called with presMu held.
func (l *Logic) nodeIndex(node string) uint32 {
	if i, ok := l.nodes[node]; ok {
		return i
	}
	i := uint32(len(l.nodes))
	l.nodes[node] = i
	return i
}

// Offline implements backend.Backend. A late Offline of an older connection
// of the same device is ignored.
func (l *Logic) Offline(_ context.Context, p backend.Presence) error {
	l.presMu.Lock()
	defer l.presMu.Unlock()
	node, ok := l.nodes[p.Node]
	if !ok {
		return nil // no device of that node was ever online here
	}
	gone := devConn{device: p.Device, conn: p.ConnID, node: node}
	d := l.more[p.UID]
	if first, ok := l.pres[p.UID]; ok && first == gone {
		if len(d) == 0 {
			delete(l.pres, p.UID)
			return nil
		}
		l.pres[p.UID], d = d[len(d)-1], d[:len(d)-1] // promote a further device
	} else {
		for i := range d {
			if d[i] == gone {
				d = append(d[:i], d[i+1:]...)
				break
			}
		}
	}
	if len(d) == 0 {
		delete(l.more, p.UID)
	} else {
		l.more[p.UID] = d
	}
	return nil
}

// devices lists the user's connected devices other than except; known is
// false when none is (or this logic has not seen them connect).
func (l *Logic) devices(uid uint64, except string) (devs []string, known bool) {
	l.presMu.Lock()
	defer l.presMu.Unlock()
	first, known := l.pres[uid]
	if !known {
		return nil, false
	}
	if first.device != except {
		devs = append(devs, first.device)
	}
	for _, dc := range l.more[uid] {
		if dc.device != except {
			devs = append(devs, dc.device)
		}
	}
	return devs, true
}

// Close stops the background work (persisting pending confirmations) and
// closes the store.
func (l *Logic) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(l.stop)
	l.wg.Wait()
	l.flushConfirms()
	return l.store.Close()
}

// ---- helpers ---------------------------------------------------------------

func badArg(msg string) error { return backend.Logical(CodeBadArgument, msg) }

func (l *Logic) checkText(s string) error {
	switch {
	case s == "":
		return badArg("empty text")
	case len(s) > l.cfg.MaxText:
		return backend.Logical(CodeTooLarge, fmt.Sprintf("text of %d bytes is over the limit of %d", len(s), l.cfg.MaxText))
	case !utf8.ValidString(s):
		return badArg("text is not UTF-8")
	}
	return nil
}

func checkMsgID(s string) error {
	if len(s) > 64 {
		return backend.Logical(CodeTooLarge, "client_msg_id over 64 bytes")
	}
	return nil
}

// encodeItem returns the SyncItem for a change at version.
func encodeItem(typ uint8, version uint64, data any) []byte {
	it := &pb.SyncItem{Type: pb.SyncType(typ), Version: version}
	switch d := data.(type) {
	case *pb.Message:
		it.Data = &pb.SyncItem_Message{Message: d}
	case *pb.Contact:
		it.Data = &pb.SyncItem_Contact{Contact: d}
	case *pb.Profile:
		it.Data = &pb.SyncItem_Profile{Profile: d}
	}
	b, _ := proto.Marshal(it)
	return b
}

func dedupKey(id string) []byte { return []byte(id) }

func dedupValue(tsMS int64, rep *pb.SendReply) []byte {
	b, _ := proto.Marshal(rep)
	return append(binary.BigEndian.AppendUint64(nil, uint64(tsMS)), b...)
}

func deviceKey(d string) []byte { return append([]byte("d:"), d...) }

func groupKey(gid uint64) []byte { return binary.BigEndian.AppendUint64(nil, gid) }

func loadGroup(tx Tx, gid uint64) (*pb.Group, error) {
	v := tx.Get(TableGroups, 0, groupKey(gid))
	if v == nil {
		return nil, backend.Logical(CodeNoGroup, fmt.Sprintf("no group %d", gid))
	}
	g := &pb.Group{}
	if err := proto.Unmarshal(v, g); err != nil {
		return nil, fmt.Errorf("logic: corrupt group %d: %w", gid, err)
	}
	return g, nil
}

func isMember(g *pb.Group, uid uint64) bool {
	_, ok := slices.BinarySearch(g.Members, uid)
	return ok
}

// ---- notifies --------------------------------------------------------------

func (l *Logic) notify(uid uint64, device string, typ uint8, ver uint64) {
	if l.cfg.Notifier == nil || uid == 0 {
		return
	}
	select {
	case l.notes <- note{uid, device, typ, ver}:
	default:
		l.m.notifies.WithLabelValues("dropped").Inc()
	}
}

// notifyOthers notifies the user's devices other than except. Without
// presence for the user (none online, or this logic restarted since they
// connected), every device is notified: the router drops it if none is
// connected, and a redundant notify costs only an empty sync.
func (l *Logic) notifyOthers(uid uint64, except string, typ uint8, ver uint64) {
	if l.cfg.Notifier == nil {
		return
	}
	devs, known := l.devices(uid, except)
	if !known {
		l.notify(uid, "", typ, ver)
		return
	}
	for _, dev := range devs {
		l.notify(uid, dev, typ, ver)
	}
}

func (l *Logic) notifyLoop() {
	defer l.wg.Done()
	for {
		select {
		case <-l.stop:
			return
		case n := <-l.notes:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := l.cfg.Notifier.Notify(ctx, n.uid, n.device, uint32(n.typ), n.ver, nil)
			cancel()
			if err != nil {
				l.m.notifies.WithLabelValues("failed").Inc()
				l.log.Debug("notify failed", "uid", n.uid, "err", err)
			} else {
				l.m.notifies.WithLabelValues("sent").Inc()
			}
		}
	}
}

// ---- messages ----------------------------------------------------------------

func (l *Logic) send(_ context.Context, r *backend.Request) ([]byte, error) {
	var q pb.SendRequest
	if err := proto.Unmarshal(r.Body, &q); err != nil {
		return nil, badArg("SendRequest: " + err.Error())
	}
	if q.To == 0 {
		return nil, badArg("no receiver")
	}
	if err := l.checkText(q.Text); err != nil {
		return nil, err
	}
	if err := checkMsgID(q.ClientMsgId); err != nil {
		return nil, err
	}
	now := time.Now().UnixMilli()
	var (
		rep     *pb.SendReply
		recvVer uint64
		dup     bool
	)
	err := l.store.Update(func(tx Tx) error {
		rep, recvVer, dup = &pb.SendReply{}, 0, false
		if p, ok := tx.(Prefetcher); ok { // the replicated store: one round trip, not three
			if q.ClientMsgId != "" {
				p.Prefetch(Key{UID: r.UID}, Key{UID: q.To}, Key{Table: TableDedup, UID: r.UID, Key: dedupKey(q.ClientMsgId)})
			} else {
				p.Prefetch(Key{UID: r.UID}, Key{UID: q.To})
			}
		}
		if q.ClientMsgId != "" {
			if v := tx.Get(TableDedup, r.UID, dedupKey(q.ClientMsgId)); len(v) >= 8 {
				dup = true
				return proto.Unmarshal(v[8:], rep)
			}
		}
		id, err := tx.NextID("msg")
		if err != nil {
			return err
		}
		m := &pb.Message{MsgId: id, From: r.UID, To: q.To, Text: q.Text, ClientMsgId: q.ClientMsgId, TsMs: now}
		build := func(v uint64) []byte { return encodeItem(typeMessages, v, m) }
		sv, err := tx.Append(r.UID, typeMessages, now, nil, build)
		if err != nil {
			return err
		}
		if q.To != r.UID {
			if recvVer, err = tx.Append(q.To, typeMessages, now, nil, build); err != nil {
				return err
			}
		}
		rep = &pb.SendReply{MsgId: id, Version: sv, TsMs: now}
		if q.ClientMsgId != "" {
			return tx.Put(TableDedup, r.UID, dedupKey(q.ClientMsgId), dedupValue(now, rep))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !dup {
		if recvVer > 0 {
			l.notify(q.To, "", typeMessages, recvVer)
		}
		l.notifyOthers(r.UID, r.Device, typeMessages, rep.Version)
	}
	return proto.Marshal(rep)
}

func (l *Logic) sendGroup(_ context.Context, r *backend.Request) ([]byte, error) {
	var q pb.SendGroupRequest
	if err := proto.Unmarshal(r.Body, &q); err != nil {
		return nil, badArg("SendGroupRequest: " + err.Error())
	}
	if q.GroupId == 0 {
		return nil, badArg("no group")
	}
	if err := l.checkText(q.Text); err != nil {
		return nil, err
	}
	if err := checkMsgID(q.ClientMsgId); err != nil {
		return nil, err
	}
	now := time.Now().UnixMilli()
	var rep *pb.SendReply
	err := l.store.Update(func(tx Tx) error {
		rep = &pb.SendReply{}
		if p, ok := tx.(Prefetcher); ok && q.ClientMsgId != "" {
			p.Prefetch(Key{Table: TableGroups, Key: groupKey(q.GroupId)}, Key{Table: TableDedup, UID: r.UID, Key: dedupKey(q.ClientMsgId)})
		}
		g, err := loadGroup(tx, q.GroupId)
		if err != nil {
			return err
		}
		if !isMember(g, r.UID) {
			return backend.Logical(CodeNotMember, fmt.Sprintf("not a member of group %d", q.GroupId))
		}
		if q.ClientMsgId != "" {
			if v := tx.Get(TableDedup, r.UID, dedupKey(q.ClientMsgId)); len(v) >= 8 {
				return proto.Unmarshal(v[8:], rep)
			}
		}
		id, err := tx.NextID("msg")
		if err != nil {
			return err
		}
		job, _ := proto.Marshal(&pb.FanoutJob{GroupId: q.GroupId, Device: r.Device, Message: &pb.Message{
			MsgId: id, From: r.UID, GroupId: q.GroupId, Text: q.Text, ClientMsgId: q.ClientMsgId, TsMs: now,
		}})
		if err := tx.Enqueue(job); err != nil {
			return err
		}
		rep = &pb.SendReply{MsgId: id, TsMs: now}
		if q.ClientMsgId != "" {
			return tx.Put(TableDedup, r.UID, dedupKey(q.ClientMsgId), dedupValue(now, rep))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.kickFanout()
	return proto.Marshal(rep)
}

func (l *Logic) kickFanout() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// fanoutLoop is the write-diffusion queue's only consumer: it takes the
// oldest jobs, writes each message into every member's inbox and removes the
// jobs in the same transaction (so a crash neither loses nor repeats a
// diffusion), then notifies the members.
func (l *Logic) fanoutLoop() {
	defer l.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.kick:
		case <-t.C:
		}
		for {
			select {
			case <-l.stop: // Close does not wait for a long backlog: it stays queued
				return
			default:
			}
			n, err := l.fanoutOnce()
			if err != nil {
				if errors.Is(err, errConflict) {
					// Several instances on one replicated store diffuse the
					// same queue, and diffusion writes race members' own
					// sends: expected, and retried.
					l.log.Debug("group write diffusion conflicted; retrying", "err", err)
				} else {
					l.log.Error("group write diffusion failed; retrying", "err", err)
				}
				select {
				case <-l.stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			if n == 0 {
				break
			}
		}
	}
}

// maxFanoutWrites bounds the inbox writes of one diffusion transaction
// (a store may ask for fewer with a MaxTxAppends method).
const maxFanoutWrites = 4096

func fanoutProgressKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("fanout_progress:"), id)
}

type fanNote struct {
	uid    uint64
	except string // for the sender: its sending device
	ver    uint64
	sender bool
}

func (l *Logic) fanoutOnce() (int, error) {
	var (
		notes  []fanNote
		jobs   int
		writes int
		lags   []float64
	)
	limit := maxFanoutWrites
	if c, ok := l.store.(interface{ MaxTxAppends() int }); ok {
		limit = c.MaxTxAppends()
	}
	err := l.store.UpdateNow(func(tx Tx) error {
		notes, jobs, writes, lags = notes[:0], 0, 0, lags[:0]
		var ids []uint64
		var ferr error
		now := time.Now().UnixMilli()
		tx.Dequeue(func(id uint64, v []byte) bool {
			var job pb.FanoutJob
			if err := proto.Unmarshal(v, &job); err != nil || job.Message == nil {
				l.log.Error("dropping a corrupt fan-out job", "id", id, "err", err)
				ids = append(ids, id)
				jobs++
				return true
			}
			g, err := loadGroup(tx, job.GroupId)
			if err != nil {
				l.log.Warn("group of a queued message is gone", "group", job.GroupId, "err", err)
				ids = append(ids, id)
				jobs++
				return true
			}
			// A job too large for what is left of this transaction waits for
			// the next one; one too large for any transaction is diffused in
			// parts, its progress (the last member written; members are
			// sorted) committed with each part, so no member gets it twice.
			members := g.Members
			pk := fanoutProgressKey(id)
			if p := tx.Get(TableMeta, 0, pk); len(p) == 8 {
				done := binary.BigEndian.Uint64(p)
				i, _ := slices.BinarySearch(members, done+1)
				members = members[i:]
			}
			if writes > 0 && writes+len(members) > limit {
				return false
			}
			partial := len(members) > limit
			if partial {
				members = members[:limit]
			}
			m := job.Message
			build := func(v uint64) []byte { return encodeItem(typeMessages, v, m) }
			for _, uid := range members {
				ver, err := tx.Append(uid, typeMessages, m.TsMs, nil, build)
				if err != nil {
					ferr = err
					return false
				}
				notes = append(notes, fanNote{uid: uid, ver: ver, sender: uid == m.From, except: job.Device})
			}
			writes += len(members)
			if partial {
				ferr = tx.Put(TableMeta, 0, pk, binary.BigEndian.AppendUint64(nil, members[len(members)-1]))
				return false
			}
			if len(members) < len(g.Members) {
				if ferr = tx.Delete(TableMeta, 0, pk); ferr != nil {
					return false
				}
			}
			ids = append(ids, id)
			jobs++
			lags = append(lags, float64(now-m.TsMs)/1000)
			return writes < limit
		})
		if ferr != nil {
			return ferr
		}
		for _, id := range ids {
			if err := tx.Remove(id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := jobs
	if n == 0 && len(notes) > 0 {
		n = 1 // a part of a large job: more to do
	}
	l.m.fanoutJobs.Add(float64(jobs))
	l.m.fanoutWrites.Add(float64(writes))
	for _, s := range lags {
		l.m.fanoutLag.Observe(max(s, 0))
	}
	for _, n := range notes {
		if n.sender {
			l.notifyOthers(n.uid, n.except, typeMessages, n.ver)
		} else {
			l.notify(n.uid, "", typeMessages, n.ver)
		}
	}
	return n, nil
}

// ---- sync --------------------------------------------------------------------

func (l *Logic) sync(_ context.Context, r *backend.Request) ([]byte, error) {
	var q pb.SyncRequest
	if err := proto.Unmarshal(r.Body, &q); err != nil {
		return nil, badArg("SyncRequest: " + err.Error())
	}
	key := SyncKey{UID: r.UID}
	if len(q.Key) > 0 {
		k, err := DecodeSyncKey(q.Key, l.secret)
		if err != nil {
			return nil, backend.Logical(CodeBadSyncKey, "sync key rejected: "+err.Error())
		}
		if k.UID != r.UID {
			return nil, backend.Logical(CodeBadSyncKey, "sync key rejected: it belongs to another user")
		}
		key = k
	}
	var sel [numTypes + 1]bool
	if len(q.Types) == 0 {
		for t := 1; t <= numTypes; t++ {
			sel[t] = true
		}
	}
	for _, t := range q.Types {
		if t < 1 || t > numTypes {
			return nil, badArg(fmt.Sprintf("unknown sync type %d", t))
		}
		sel[t] = true
	}
	limit := int(q.Limit)
	if limit <= 0 {
		limit = l.cfg.DefaultLimit
	}
	limit = min(limit, l.cfg.MaxLimit)

	var (
		out    []byte
		more   bool
		cursor uint64
	)
	err := l.store.View(func(tx Tx) error {
		out, more = out[:0], false
		head := tx.Head(r.UID)
		from := uint64(1<<64 - 1)
		for t := 1; t <= numTypes; t++ {
			if key.Ver[t] > head {
				return backend.Logical(CodeFutureSyncKey, fmt.Sprintf("sync key is ahead of the server (type %d at %d, server at %d)", t, key.Ver[t], head))
			}
			if sel[t] {
				from = min(from, key.Ver[t])
			}
		}
		n := 0
		tx.Scan(r.UID, from, func(ver uint64, typ uint8, item []byte) bool {
			if typ < 1 || typ > numTypes || !sel[typ] || ver <= key.Ver[typ] {
				return true
			}
			if n >= limit || (n > 0 && len(out)+len(item) > maxSyncBytes) {
				more = true
				return false
			}
			out = protowire.AppendTag(out, 1, protowire.BytesType)
			out = protowire.AppendBytes(out, item)
			n++
			cursor = ver
			return true
		})
		if !more {
			cursor = head
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	next := key
	for t := 1; t <= numTypes; t++ {
		if sel[t] {
			next.Ver[t] = max(next.Ver[t], cursor)
		}
	}
	out = protowire.AppendTag(out, 2, protowire.BytesType)
	out = protowire.AppendBytes(out, next.Encode(l.secret))
	if more {
		out = protowire.AppendTag(out, 3, protowire.VarintType)
		out = protowire.AppendVarint(out, 1)
	}
	if len(q.Key) > 0 && key.Ver[typeMessages] > 0 {
		l.confirm(r.UID, r.Device, key.Ver[typeMessages])
	}
	return out, nil
}

// confirm records that device holds the user's messages up to ver (it
// presented a key with that version). Persisted by the trimmer.
func (l *Logic) confirm(uid uint64, device string, ver uint64) {
	k := confKey{uid, device}
	l.confMu.Lock()
	if ver > l.conf[k] {
		l.conf[k] = ver
	}
	l.confMu.Unlock()
}

func (l *Logic) trimLoop() {
	defer l.wg.Done()
	t := time.NewTicker(l.cfg.TrimInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.flushConfirms()
		}
	}
}

// flushConfirms persists the confirmations gathered since the last flush and
// trims those users' delivered messages.
func (l *Logic) flushConfirms() {
	l.confMu.Lock()
	conf := l.conf
	if len(conf) == 0 {
		l.confMu.Unlock()
		return
	}
	l.conf = map[confKey]uint64{}
	l.confMu.Unlock()
	users := map[uint64]bool{}
	for k := range conf {
		users[k.uid] = true
	}
	var trimmed int
	err := l.store.UpdateNow(func(tx Tx) error {
		trimmed = 0
		now := time.Now()
		nowMS := now.UnixMilli()
		for k, ver := range conf {
			old := tx.Get(TableDevices, k.uid, deviceKey(k.device))
			if len(old) == 16 {
				ver = max(ver, binary.BigEndian.Uint64(old))
			}
			v := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, ver), uint64(nowMS))
			if err := tx.Put(TableDevices, k.uid, deviceKey(k.device), v); err != nil {
				return err
			}
		}
		alive := now.Add(-l.cfg.DeviceTTL).UnixMilli()
		before := now.Add(-max(l.cfg.Retention, 0)).UnixMilli()
		if l.cfg.Retention < 0 {
			before = nowMS + 1
		}
		dedupBefore := now.Add(-l.cfg.DedupTTL).UnixMilli()
		for uid := range users {
			upto := uint64(1<<64 - 1)
			tx.ForEach(TableDevices, uid, func(_, v []byte) bool {
				if len(v) == 16 && int64(binary.BigEndian.Uint64(v[8:])) >= alive {
					upto = min(upto, binary.BigEndian.Uint64(v))
				}
				return true
			})
			trimmed += tx.Trim(uid, upto, before, 1024)
			var old [][]byte
			tx.ForEach(TableDedup, uid, func(k, v []byte) bool {
				if len(v) >= 8 && int64(binary.BigEndian.Uint64(v)) < dedupBefore {
					old = append(old, append([]byte(nil), k...))
				}
				return len(old) < 1024
			})
			for _, k := range old {
				if err := tx.Delete(TableDedup, uid, k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		l.log.Warn("persisting sync confirmations failed", "err", err)
		return
	}
	l.m.trimmed.Add(float64(trimmed))
}

// ---- contacts and profile ------------------------------------------------------

func contactKey(uid uint64) []byte { return binary.BigEndian.AppendUint64([]byte("c"), uid) }

var profileKey = []byte("p")

func (l *Logic) contact(remove bool) backend.Handler {
	return func(_ context.Context, r *backend.Request) ([]byte, error) {
		var q pb.ContactRequest
		if err := proto.Unmarshal(r.Body, &q); err != nil {
			return nil, badArg("ContactRequest: " + err.Error())
		}
		if q.Uid == 0 || q.Uid == r.UID {
			return nil, badArg("bad contact uid")
		}
		if len(q.Remark) > 64 {
			return nil, backend.Logical(CodeTooLarge, "remark over 64 bytes")
		}
		now := time.Now().UnixMilli()
		var (
			item []byte
			ver  uint64
		)
		err := l.store.Update(func(tx Tx) error {
			if remove {
				var it pb.SyncItem
				st := tx.State(r.UID, contactKey(q.Uid))
				if st == nil || proto.Unmarshal(st, &it) != nil || it.GetContact().GetRemoved() {
					return backend.Logical(CodeNotContact, fmt.Sprintf("%d is not a contact", q.Uid))
				}
			}
			c := &pb.Contact{Uid: q.Uid, Remark: q.Remark, Removed: remove}
			var err error
			ver, err = tx.Append(r.UID, typeContacts, now, contactKey(q.Uid), func(v uint64) []byte {
				item = encodeItem(typeContacts, v, c)
				return item
			})
			return err
		})
		if err != nil {
			return nil, err
		}
		l.notifyOthers(r.UID, r.Device, typeContacts, ver)
		return item, nil
	}
}

func (l *Logic) profileGet(_ context.Context, r *backend.Request) ([]byte, error) {
	var q pb.ProfileGetRequest
	if err := proto.Unmarshal(r.Body, &q); err != nil {
		return nil, badArg("ProfileGetRequest: " + err.Error())
	}
	uid := q.Uid
	if uid == 0 {
		uid = r.UID
	}
	p := &pb.Profile{Uid: uid}
	err := l.store.View(func(tx Tx) error {
		var it pb.SyncItem
		if st := tx.State(uid, profileKey); st != nil && proto.Unmarshal(st, &it) == nil && it.GetProfile() != nil {
			p = it.GetProfile()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return proto.Marshal(p)
}

func (l *Logic) profileSet(_ context.Context, r *backend.Request) ([]byte, error) {
	var q pb.ProfileSetRequest
	if err := proto.Unmarshal(r.Body, &q); err != nil {
		return nil, badArg("ProfileSetRequest: " + err.Error())
	}
	if len(q.Nickname) > 64 || len(q.Signature) > 256 {
		return nil, backend.Logical(CodeTooLarge, "nickname over 64 or signature over 256 bytes")
	}
	if !utf8.ValidString(q.Nickname) || !utf8.ValidString(q.Signature) {
		return nil, badArg("profile is not UTF-8")
	}
	p := &pb.Profile{Uid: r.UID, Nickname: q.Nickname, Signature: q.Signature}
	now := time.Now().UnixMilli()
	var ver uint64
	err := l.store.Update(func(tx Tx) error {
		var err error
		ver, err = tx.Append(r.UID, typeProfile, now, profileKey, func(v uint64) []byte { return encodeItem(typeProfile, v, p) })
		return err
	})
	if err != nil {
		return nil, err
	}
	l.notifyOthers(r.UID, r.Device, typeProfile, ver)
	return proto.Marshal(p)
}

// ---- groups ----------------------------------------------------------------------

// union returns the sorted, de-duplicated members of a and b.
func union(a, b []uint64) []uint64 {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

func (l *Logic) checkMembers(ms []uint64) error {
	for _, m := range ms {
		if m == 0 {
			return badArg("member uid 0")
		}
	}
	if len(ms) > l.cfg.MaxGroup {
		return backend.Logical(CodeGroupTooLarge, fmt.Sprintf("a group has at most %d members", l.cfg.MaxGroup))
	}
	return nil
}

func (l *Logic) groupCreate(_ context.Context, r *backend.Request) ([]byte, error) {
	var q pb.GroupCreateRequest
	if err := proto.Unmarshal(r.Body, &q); err != nil {
		return nil, badArg("GroupCreateRequest: " + err.Error())
	}
	if len(q.Members) > 4*l.cfg.MaxGroup {
		return nil, backend.Logical(CodeGroupTooLarge, fmt.Sprintf("a group has at most %d members", l.cfg.MaxGroup))
	}
	members := union(q.Members, []uint64{r.UID})
	if err := l.checkMembers(members); err != nil {
		return nil, err
	}
	var g *pb.Group
	err := l.store.Update(func(tx Tx) error {
		gid, err := tx.NextID("group")
		if err != nil {
			return err
		}
		g = &pb.Group{GroupId: gid, Owner: r.UID, Members: members}
		b, _ := proto.Marshal(g)
		return tx.Put(TableGroups, 0, groupKey(gid), b)
	})
	if err != nil {
		return nil, err
	}
	return proto.Marshal(g)
}

func (l *Logic) groupAdd(_ context.Context, r *backend.Request) ([]byte, error) {
	var q pb.GroupAddRequest
	if err := proto.Unmarshal(r.Body, &q); err != nil {
		return nil, badArg("GroupAddRequest: " + err.Error())
	}
	if len(q.Members) > 4*l.cfg.MaxGroup {
		return nil, backend.Logical(CodeGroupTooLarge, fmt.Sprintf("a group has at most %d members", l.cfg.MaxGroup))
	}
	var g *pb.Group
	err := l.store.Update(func(tx Tx) error {
		var err error
		if g, err = loadGroup(tx, q.GroupId); err != nil {
			return err
		}
		if !isMember(g, r.UID) {
			return backend.Logical(CodeNotMember, fmt.Sprintf("not a member of group %d", q.GroupId))
		}
		g.Members = union(g.Members, q.Members)
		if err := l.checkMembers(g.Members); err != nil {
			return err
		}
		b, _ := proto.Marshal(g)
		return tx.Put(TableGroups, 0, groupKey(g.GroupId), b)
	})
	if err != nil {
		return nil, err
	}
	return proto.Marshal(g)
}

// errClosed is returned by calls after Close.
var errClosed = errors.New("logic: closed")

var _ backend.Backend = (*Logic)(nil)
