package offline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/push"
)

// SenderConfig configures a Sender.
type SenderConfig struct {
	JS      jetstream.JetStream // required, on a RoleOffline connection
	Devices *Devices            // required
	// Presence returns the devices of uid connected now (push.Router.Devices
	// in the supervisor, push.AskDevices from a separate process).
	Presence func(ctx context.Context, uid uint64) ([]string, error)
	Clients  []provider.Client // one per platform served; a registration of another platform is dropped (counted)

	Delay          time.Duration // wait this long after a notify before sending (default 3s): a device back by then is not notified
	Budget         time.Duration // give up on a notify this long after it (default 10m)
	MaxAttempts    int           // provider attempts per device and notify (default 6)
	RequestTimeout time.Duration // one provider request (default 10s)
	Concurrency    int           // queue messages handled at once (default 64)
	Rate           float64       // provider requests per second, per provider (0: unlimited)
	PauseRetry     time.Duration // a paused provider's notifies are looked at again after this (default 5s)
	RetryBase      time.Duration // first retry after a transient failure without Retry-After (default 1s; doubles per attempt, at most 1m)
	Replicas       int           // of the stream and buckets (default 1)
	MaxAckPending  int           // queued notifies in flight (waiting out the delay included; default 100000)
	AckWait        time.Duration // a message taken by a sender that died is redelivered after this (default 30s)
	Online         *Online       // optional, shared with the in-process Enqueuer: filled from device queries (online.go)
	Logger         *slog.Logger
}

// Sender turns queued notifies into provider requests (see the package doc).
//
// Delivery is at most once per device and notify: a message is
// acknowledged (synchronously) before its requests are made, so a sender
// killed after the acknowledgement loses those requests rather than making
// them twice; one killed before it leaves the message to be redelivered
// after AckWait, when nothing of it was sent. The notification only says
// "sync"; what it announces is never lost (the client syncs on its next
// connect). Retries are new queue messages for the one device.
type Sender struct {
	cfg     SenderConfig
	clients map[string]provider.Client
	limits  map[string]*rate.Limiter
	backoff map[string]*atomic.Int64 // unix ns until which a provider is throttled
	sw      atomic.Pointer[Switches]
	stream  jetstream.Stream
	cons    jetstream.Consumer
	log     *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}
	sent   sentLog

	m senderMetrics
}

// sentLog remembers, for a minute or two, the newest version each (user,
// type, device) was notified of, so the same notify reaching a device by
// two subjects (its user's queued notify, and the report of a connection
// that closed with it unsent; or a replay from the Online cache) makes one
// request. Per sender process.
type sentLog struct {
	mu       sync.Mutex
	cur, old map[sentKey]uint64
	swapped  time.Time
}

type sentKey struct {
	uid    uint64
	typ    uint32
	device string
}

const sentGeneration = time.Minute

// claim reports whether version v is new for k, recording it if so (before
// the request: two jobs handled at once must not both send).
func (l *sentLog) claim(k sentKey, v uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); l.cur == nil || now.Sub(l.swapped) > sentGeneration {
		l.old, l.cur, l.swapped = l.cur, make(map[sentKey]uint64, len(l.cur)), now
	}
	if s, ok := l.cur[k]; ok && s >= v {
		return false
	}
	if s, ok := l.old[k]; ok && s >= v {
		return false
	}
	l.cur[k] = v
	return true
}

type senderMetrics struct {
	sent, cancelled    *prometheus.CounterVec
	failed, retries    *prometheus.CounterVec
	deletions, dropped *prometheus.CounterVec
	depth, oldest      prometheus.Gauge
	all                []prometheus.Collector
}

// NewSender creates the stream and consumer (if needed) and starts sending.
func NewSender(ctx context.Context, cfg SenderConfig) (*Sender, error) {
	if cfg.JS == nil || cfg.Devices == nil || cfg.Presence == nil {
		return nil, errors.New("offline: SenderConfig.JS, Devices and Presence are required")
	}
	if cfg.Delay <= 0 {
		cfg.Delay = 3 * time.Second
	}
	if cfg.Budget <= 0 {
		cfg.Budget = 10 * time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 6
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.PauseRetry <= 0 {
		cfg.PauseRetry = 5 * time.Second
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = time.Second
	}
	if cfg.MaxAckPending <= 0 {
		cfg.MaxAckPending = 100000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Sender{cfg: cfg, clients: map[string]provider.Client{}, limits: map[string]*rate.Limiter{}, backoff: map[string]*atomic.Int64{},
		log: cfg.Logger, sem: make(chan struct{}, cfg.Concurrency)}
	for _, c := range cfg.Clients {
		p := c.Platform()
		s.clients[p] = c
		if cfg.Rate > 0 {
			s.limits[p] = rate.NewLimiter(rate.Limit(cfg.Rate), max(1, int(cfg.Rate/10)))
		}
	}
	for _, p := range []string{provider.APNs, provider.FCM, provider.HMS} {
		s.backoff[p] = new(atomic.Int64)
	}
	s.sw.Store(&Switches{})
	s.initMetrics()
	var err error
	if s.stream, err = EnsureStream(ctx, cfg.JS, cfg.Replicas, cfg.Budget); err != nil {
		return nil, err
	}
	s.cons, err = s.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: push.OfflineDurable,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: cfg.AckWait, MaxAckPending: cfg.MaxAckPending, MaxDeliver: -1})
	if err != nil {
		return nil, fmt.Errorf("offline: consumer %s: %w", push.OfflineDurable, err)
	}
	swkv, err := cfg.JS.CreateOrUpdateKeyValue(ctx, SwitchBucketConfig(cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("offline: switches bucket: %w", err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	w, err := swkv.Watch(s.ctx, switchKey)
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("offline: watching switches: %w", err)
	}
	first := make(chan struct{})
	s.wg.Add(3)
	go s.watchSwitches(w, first)
	select { // the switches are known before the first message is looked at
	case <-first:
	case <-ctx.Done():
	}
	go s.consume()
	go s.gauges()
	return s, nil
}

func (s *Sender) initMetrics() {
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	s.m.sent = cv("longlink_offline_sent_total", "Provider requests accepted, by provider.", "provider")
	s.m.cancelled = cv("longlink_offline_cancelled_total", "Device notifications not sent because the device was connected when the delay ran out (it got the notify over the long connection, or synced on connecting).", "provider")
	s.m.failed = cv("longlink_offline_failed_total", "Device notifications given up, by provider and reason (the service's error code, budget, no_client).", "provider", "reason")
	s.m.retries = cv("longlink_offline_retries_total", "Device notifications queued again after a transient failure or throttling, by provider and reason.", "provider", "reason")
	s.m.deletions = cv("longlink_offline_token_deletions_total", "Registrations deleted, by provider and reason (the service said invalid, or expired).", "provider", "reason")
	s.m.dropped = cv("longlink_offline_dropped_total", "Queued notifies dropped before any request, by reason (kill_switch, budget, no_device, malformed, duplicate: that device was just notified of this version or a newer one).", "reason")
	s.m.depth = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_offline_queue_depth", Help: "Notifies on the offline queue not yet acknowledged (waiting out the delay included)."})
	s.m.oldest = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_offline_queue_oldest_seconds", Help: "Age of the oldest message on the offline queue."})
	for _, p := range []string{provider.APNs, provider.FCM, provider.HMS} {
		s.m.sent.WithLabelValues(p)
		s.m.cancelled.WithLabelValues(p)
	}
	for _, r := range []string{"kill_switch", "budget", "no_device", "malformed", "duplicate"} {
		s.m.dropped.WithLabelValues(r)
	}
	s.m.all = []prometheus.Collector{s.m.sent, s.m.cancelled, s.m.failed, s.m.retries, s.m.deletions, s.m.dropped, s.m.depth, s.m.oldest}
}

// Collectors returns the sender's metrics.
func (s *Sender) Collectors() []prometheus.Collector { return s.m.all }

// Switches returns the switches in force.
func (s *Sender) Switches() Switches { return *s.sw.Load() }

func (s *Sender) watchSwitches(w jetstream.KeyWatcher, first chan struct{}) {
	defer s.wg.Done()
	defer func() { _ = w.Stop() }()
	once := sync.OnceFunc(func() { close(first) })
	defer once()
	for {
		select {
		case <-s.ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				once()
				continue
			}
			var sw Switches
			if e.Operation() == jetstream.KeyValuePut {
				if err := json.Unmarshal(e.Value(), &sw); err != nil {
					s.log.Error("offline: bad switches value; keeping the previous", "err", err)
					continue
				}
			}
			s.sw.Store(&sw)
			s.log.Warn("audit: offline switches changed", "off", sw.Off, "paused", sw.Paused, "by", sw.By, "reason", sw.Reason, "revision", e.Revision(), "at", sw.At)
		}
	}
}

func (s *Sender) consume() {
	defer s.wg.Done()
	for s.ctx.Err() == nil {
		it, err := s.cons.Messages(jetstream.PullMaxMessages(min(512, s.cfg.Concurrency*4)))
		if err != nil {
			s.log.Warn("offline: consumer", "err", err)
			select {
			case <-s.ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		stop := context.AfterFunc(s.ctx, it.Stop)
		for {
			m, err := it.Next()
			if err != nil {
				break
			}
			s.sem <- struct{}{}
			s.wg.Add(1)
			go func() {
				defer func() { <-s.sem; s.wg.Done() }()
				s.handle(m)
			}()
		}
		stop()
		it.Stop()
	}
}

func (s *Sender) gauges() {
	defer s.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
		if ci, err := s.cons.Info(ctx); err == nil {
			s.m.depth.Set(float64(ci.NumPending + uint64(ci.NumAckPending)))
		}
		if si, err := s.stream.Info(ctx); err == nil {
			if si.State.Msgs > 0 {
				s.m.oldest.Set(time.Since(si.State.FirstTime).Seconds())
			} else {
				s.m.oldest.Set(0)
			}
		}
		cancel()
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// handle looks at one queue message (the package doc and Sender say how).
func (s *Sender) handle(m jetstream.Msg) {
	var j Job
	if err := json.Unmarshal(m.Data(), &j); err != nil || j.UID == 0 {
		_ = m.Term()
		s.m.dropped.WithLabelValues("malformed").Inc()
		return
	}
	sw := s.sw.Load()
	if sw.Off {
		_ = m.Ack()
		s.m.dropped.WithLabelValues("kill_switch").Inc()
		return
	}
	now := time.Now()
	due := j.At + int64(s.cfg.Delay)
	if j.NotBefor != 0 {
		due = j.NotBefor // retries do not wait out the delay again
	}
	if wait := time.Duration(due - now.UnixNano()); wait > 0 {
		_ = m.NakWithDelay(wait)
		return
	}
	if now.UnixNano() > j.NotAfter {
		_ = m.Ack()
		s.m.dropped.WithLabelValues("budget").Inc()
		return
	}
	devs := s.cfg.Devices.Get(j.UID)
	todo := devs[:0]
	for _, d := range devs {
		switch {
		case j.Device != "" && d.Device != j.Device:
		case d.Reg.Expires < now.Unix():
			s.m.deletions.WithLabelValues(d.Reg.Platform, "expired").Inc()
			s.deleteReg(j.UID, d)
		default:
			todo = append(todo, d)
		}
	}
	if len(todo) == 0 {
		_ = m.Ack()
		s.m.dropped.WithLabelValues("no_device").Inc()
		return
	}
	begin := s.cfg.Online.Begin(j.UID)
	pctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	online, err := s.cfg.Presence(pctx, j.UID)
	cancel()
	if err != nil { // notify rather than stay silent: a duplicate is better than a miss
		s.log.Debug("offline: device query failed; sending anyway", "uid", j.UID, "err", err)
	} else if s.cfg.Online != nil {
		if fp, all := s.cfg.Devices.covered(j.UID, online); all {
			s.cfg.Online.Fill(j.UID, begin, fp)
		}
	}
	send := todo[:0]
	for _, d := range todo {
		switch {
		case slices.Contains(online, d.Device):
			s.m.cancelled.WithLabelValues(d.Reg.Platform).Inc()
		case s.clients[d.Reg.Platform] == nil:
			s.m.failed.WithLabelValues(d.Reg.Platform, "no_client").Inc()
		case sw.IsPaused(d.Reg.Platform):
			if !s.requeue(j, d, s.cfg.PauseRetry, false, "paused") {
				return // not requeued: leave the message to be redelivered
			}
		case j.NotBefor == 0 && !s.sent.claim(sentKey{j.UID, j.Type, d.Device}, j.Version): // a requeue or retry is the same notify, claimed already
			s.m.dropped.WithLabelValues("duplicate").Inc()
		default:
			send = append(send, d)
		}
	}
	// At most once: acknowledged before any request (see Sender).
	actx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	err = m.DoubleAck(actx)
	cancel()
	if err != nil {
		return // redelivered after AckWait; nothing was sent
	}
	for _, d := range send {
		s.sendOne(&j, d)
	}
}

func (s *Sender) deleteReg(uid uint64, d Device) {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if err := s.cfg.Devices.Delete(ctx, uid, d.Device, d.Revision); err != nil {
		s.log.Debug("offline: registration not deleted (re-registered since?)", "uid", uid, "err", err)
	}
}

// CollapseID is the collapse id of a (user, type) notification: a device
// shows the newest one only.
func CollapseID(typ uint32) string { return "ll-" + strconv.FormatUint(uint64(typ), 10) }

func (s *Sender) sendOne(j *Job, d Device) {
	p := d.Reg.Platform
	if until := s.backoff[p].Load(); until > time.Now().UnixNano() {
		s.requeue(*j, d, time.Duration(until-time.Now().UnixNano()), false, "throttled")
		return
	}
	if l := s.limits[p]; l != nil {
		if err := l.Wait(s.ctx); err != nil {
			s.requeue(*j, d, time.Second, false, "shutdown")
			return
		}
	}
	msg := provider.Message{UID: j.UID, Device: d.Device, Token: d.Reg.Token, Topic: d.Reg.Topic, Sandbox: d.Reg.Sandbox,
		Type: j.Type, Version: j.Version, Payload: j.Payload, CollapseID: CollapseID(j.Type), High: true, Expires: time.Unix(0, j.NotAfter)}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	r := s.clients[p].Send(ctx, &msg)
	cancel()
	switch r.Action {
	case provider.Done:
		s.m.sent.WithLabelValues(p).Inc()
	case provider.DeleteToken:
		s.m.failed.WithLabelValues(p, r.Reason).Inc()
		s.m.deletions.WithLabelValues(p, "invalid").Inc()
		s.deleteReg(j.UID, d)
	case provider.Drop:
		s.m.failed.WithLabelValues(p, r.Reason).Inc()
	case provider.Retry, provider.BackOff:
		wait := r.RetryAfter
		if wait <= 0 {
			wait = min(s.cfg.RetryBase<<j.Attempts, time.Minute)
			if r.Action == provider.BackOff {
				wait = max(wait, 5*s.cfg.RetryBase)
			}
		}
		wait = min(wait, 10*time.Minute)
		if r.Action == provider.BackOff && r.Global {
			s.backoff[p].Store(time.Now().Add(wait).UnixNano())
			s.log.Warn("offline: provider throttled us; backing off", "provider", p, "for", wait, "reason", r.Reason)
		}
		s.requeue(*j, d, wait, true, r.Reason)
	}
}

// requeue queues j again for device d only, after wait. attempt says
// whether a request was made (it counts against MaxAttempts). It reports
// whether j is settled (requeued or given up).
func (s *Sender) requeue(j Job, d Device, wait time.Duration, attempt bool, reason string) bool {
	p := d.Reg.Platform
	if attempt {
		j.Attempts++
	}
	next := time.Now().Add(wait).UnixNano()
	if j.Attempts >= s.cfg.MaxAttempts || next > j.NotAfter {
		s.m.failed.WithLabelValues(p, "gave_up_"+reason).Inc()
		return true
	}
	j.Device, j.NotBefor = d.Device, next
	b, _ := json.Marshal(&j)
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	subj := (&Job{UID: j.UID, Device: j.Device, Type: j.Type, Attempts: 1}).Subject() // the device's own subject
	if _, err := s.cfg.JS.Publish(ctx, subj, b); err != nil {
		s.m.failed.WithLabelValues(p, "requeue").Inc()
		return false
	}
	s.m.retries.WithLabelValues(p, reason).Inc()
	return true
}

// Close stops consuming and waits for the requests in flight.
func (s *Sender) Close() {
	s.cancel()
	s.wg.Wait()
}
