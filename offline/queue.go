package offline

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/longlink/longlink/push"
)

// Job is one queued notify (the JSON body of a LONGLINK_OFFLINE message).
type Job struct {
	UID      uint64 `json:"u"`
	Device   string `json:"d,omitempty"` // "": every registered device of the user
	Type     uint32 `json:"t"`
	Version  uint64 `json:"v"`
	Payload  []byte `json:"p,omitempty"`
	At       int64  `json:"at"`           // unix ns the router saw the notify
	NotAfter int64  `json:"na"`           // unix ns: give up after (At + budget)
	NotBefor int64  `json:"nb,omitempty"` // unix ns: a retry waits until then
	Attempts int    `json:"n,omitempty"`  // provider attempts already made (retries)
}

// Subject is the queue subject of a job: one per (user, type) for a
// user-wide notify, one per (user, type, device) for a device's notify or
// retry. The stream keeps one message per subject: the newest wins.
func (j *Job) Subject() string {
	s := "longlink.offline."
	if j.Device == "" && j.Attempts == 0 {
		return s + "u." + strconv.FormatUint(j.UID, 10) + "." + strconv.FormatUint(uint64(j.Type), 10)
	}
	return s + "d." + strconv.FormatUint(j.UID, 10) + "." + strconv.FormatUint(uint64(j.Type), 10) + "." + Key(0, j.Device)[2:]
}

// StreamConfig is the offline queue: file storage, replicated as
// configured, one message per subject (collapse), nothing older than the
// retry budget.
func StreamConfig(replicas int, budget time.Duration) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: push.OfflineStream, Description: "longlink offline notifications (offline/)",
		Subjects: []string{push.OfflineSubjects}, MaxMsgsPerSubject: 1, Discard: jetstream.DiscardOld,
		MaxAge: budget + time.Minute, Storage: jetstream.FileStorage, Replicas: max(1, replicas)}
}

// EnsureStream creates or updates the queue stream.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int, budget time.Duration) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, StreamConfig(replicas, budget))
	if err != nil {
		return nil, fmt.Errorf("offline: stream %s: %w", push.OfflineStream, err)
	}
	return s, nil
}

// EnqueuerConfig configures an Enqueuer.
type EnqueuerConfig struct {
	JS      jetstream.JetStream // required, on a RoleOffline connection
	Devices *Devices            // required: who has registered devices
	Delay   time.Duration       // the sender's delay: notifies closer than this collapse (metric only; default 3s)
	Budget  time.Duration       // give up on a notify this long after it (default 10m)
	Queue   int                 // notifies waiting to be published before they are dropped (default 65536)
	// Online, if set (shared with an in-process Sender), spares the queue
	// the notifies of users whose every registered device is connected
	// (online.go).
	Online *Online
	Logger *slog.Logger
}

// Enqueuer is the router's push.OfflineHook: for a user with at least one
// registered device, it publishes the notify to the queue. Notified never
// blocks: it hands the notify to one publishing goroutine through a bounded
// channel (full: dropped, counted); the publishes are asynchronous
// (PublishAsync, failures counted).
type Enqueuer struct {
	cfg  EnqueuerConfig
	js   jetstream.JetStream // cfg.JS's connection, with our async-error counter
	ch   chan Job
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	enqueued, collapsed, dropped, failed prometheus.Counter
	skipped, replayed                    prometheus.Counter
	all                                  []prometheus.Collector
}

// NewEnqueuer starts the publishing goroutine.
func NewEnqueuer(cfg EnqueuerConfig) *Enqueuer {
	if cfg.Delay <= 0 {
		cfg.Delay = 3 * time.Second
	}
	if cfg.Budget <= 0 {
		cfg.Budget = 10 * time.Minute
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 1 << 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Enqueuer{cfg: cfg, ch: make(chan Job, cfg.Queue), stop: make(chan struct{})}
	e.enqueued = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_offline_enqueued_total", Help: "Notifies for users with registered devices put on the offline queue."})
	e.collapsed = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_offline_collapsed_total", Help: "Queued notifies that replaced a newer-than-delay one of the same user and type (the queue keeps the newest)."})
	e.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_offline_enqueue_dropped_total", Help: "Notifies dropped because the enqueue buffer was full."})
	e.failed = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_offline_enqueue_failed_total", Help: "Queue publishes JetStream did not acknowledge."})
	e.skipped = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_offline_skipped_online_total", Help: "Notifies not queued: every registered device of the user was connected (the online cache)."})
	e.replayed = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_offline_replayed_total", Help: "Skipped notifies queued after all because a connection of the user closed within the hold."})
	e.all = []prometheus.Collector{e.enqueued, e.collapsed, e.dropped, e.failed, e.skipped, e.replayed}
	js, err := jetstream.New(cfg.JS.Conn(), jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { e.failed.Inc() }))
	if err != nil {
		js = cfg.JS
	}
	e.js = js
	e.wg.Add(1)
	go e.run()
	return e
}

// Collectors returns the enqueuer's metrics.
func (e *Enqueuer) Collectors() []prometheus.Collector { return e.all }

// Notified implements push.OfflineHook. Users without a registered device
// cost one sharded map lookup; online users in the Online cache one more.
func (e *Enqueuer) Notified(uid uint64, device string, typ uint32, version uint64, payload []byte, online bool) {
	if typ == 0 { // "resync everything": never a user notification
		return
	}
	fp, _ := e.cfg.Devices.covered(uid, nil)
	if fp == 0 { // no registered device
		return
	}
	now := time.Now().UnixNano()
	j := Job{UID: uid, Device: device, Type: typ, Version: version, At: now, NotAfter: now + int64(e.cfg.Budget)}
	if len(payload) > 0 {
		j.Payload = append([]byte(nil), payload...)
	}
	if online && e.cfg.Online != nil && e.cfg.Online.skip(&j, fp) {
		e.skipped.Inc()
		return
	}
	e.enqueue(j)
}

func (e *Enqueuer) enqueue(j Job) {
	select {
	case e.ch <- j:
	default:
		e.dropped.Inc() // full, or closed (nothing reads any more)
	}
}

// Left implements push.OfflinePresence: a connection of uid closed, so its
// Online entry ends and what it skipped within the hold is queued now.
func (e *Enqueuer) Left(uid uint64) {
	if e.cfg.Online == nil {
		return
	}
	for _, j := range e.cfg.Online.left(uid) {
		e.replayed.Inc()
		e.enqueue(j)
	}
}

// Reset implements push.OfflinePresence: the router lost track of a node's
// users; every Online entry ends (what they skipped within the hold is
// queued).
func (e *Enqueuer) Reset() {
	if e.cfg.Online == nil {
		return
	}
	for _, j := range e.cfg.Online.reset() {
		e.replayed.Inc()
		e.enqueue(j)
	}
}

type collapseKey struct {
	uid    uint64
	typ    uint32
	device string
}

func (e *Enqueuer) run() {
	defer e.wg.Done()
	recent := map[collapseKey]int64{} // last enqueue per subject, for the collapsed metric
	prune := time.Now()
	for {
		select {
		case j := <-e.ch:
			e.publish(&j, recent)
		case <-e.stop:
			for { // publish what is buffered, then stop
				select {
				case j := <-e.ch:
					e.publish(&j, recent)
				default:
					return
				}
			}
		}
		if time.Since(prune) > e.cfg.Delay || len(recent) > 1<<20 {
			cut := time.Now().Add(-e.cfg.Delay).UnixNano()
			for k, t := range recent {
				if t < cut {
					delete(recent, k)
				}
			}
			prune = time.Now()
		}
	}
}

func (e *Enqueuer) publish(j *Job, recent map[collapseKey]int64) {
	b, _ := json.Marshal(j)
	if _, err := e.js.PublishAsync(j.Subject(), b); err != nil {
		e.failed.Inc()
		return
	}
	e.enqueued.Inc()
	k := collapseKey{j.UID, j.Type, j.Device}
	if t, ok := recent[k]; ok && j.At-t < int64(e.cfg.Delay) {
		e.collapsed.Inc()
	}
	recent[k] = j.At
}

// Close publishes what is buffered, stops, and waits for the publishes in
// flight. Notified may still be called afterwards (it drops once the
// buffer is full); safe to call twice.
func (e *Enqueuer) Close() {
	e.once.Do(func() { close(e.stop) })
	e.wg.Wait()
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(5 * time.Second):
	}
}
