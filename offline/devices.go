package offline

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/push"
)

// Registration is one device's push token, the value under key
// "<uid>.<device>" in the LONGLINK_DEVICES bucket.
type Registration struct {
	Platform   string `json:"platform"`          // apns, fcm, hms
	Token      string `json:"token"`             // the platform's device / registration token
	Topic      string `json:"topic,omitempty"`   // APNs apns-topic (bundle id); FCM/HMS: the app, informational
	Sandbox    bool   `json:"sandbox,omitempty"` // APNs development environment
	Expires    int64  `json:"expires"`           // unix seconds; an expired registration is ignored and deleted
	Registered int64  `json:"registered"`        // unix seconds
}

// Limits of a registration.
const (
	DefaultTTL = 30 * 24 * time.Hour  // a client re-registers at least this often (every app start, typically)
	MaxTTL     = 180 * 24 * time.Hour //
	maxToken   = 4096
	maxTopic   = 255
)

// Validate checks a registration's fields.
func (r *Registration) Validate() error {
	switch r.Platform {
	case provider.APNs:
		if len(r.Token) < 32 || len(r.Token) > 200 || strings.Trim(strings.ToLower(r.Token), "0123456789abcdef") != "" {
			return errors.New("apns token: want 32-200 hex digits")
		}
	case provider.FCM, provider.HMS:
		if r.Token == "" || len(r.Token) > maxToken {
			return fmt.Errorf("%s token: want 1-%d bytes", r.Platform, maxToken)
		}
	default:
		return fmt.Errorf("platform %q: want apns, fcm or hms", r.Platform)
	}
	if len(r.Topic) > maxTopic {
		return errors.New("topic over 255 bytes")
	}
	// The topic becomes the apns-topic header: a control character would
	// make every request for the device fail in the HTTP client (retried to
	// the budget), never reach APNs.
	for i := 0; i < len(r.Topic); i++ {
		if c := r.Topic[i]; c <= ' ' || c >= 0x7f {
			return errors.New("topic: want printable ASCII without spaces (a bundle id)")
		}
	}
	return nil
}

// Key is the bucket key of (uid, device): the device id base64url-encoded
// ("_" for none), since device ids may hold anything and KV keys may not.
func Key(uid uint64, device string) string {
	d := "_"
	if device != "" {
		d = base64.RawURLEncoding.EncodeToString([]byte(device))
	}
	return strconv.FormatUint(uid, 10) + "." + d
}

func parseKey(k string) (uint64, string, bool) {
	u, d, ok := strings.Cut(k, ".")
	if !ok {
		return 0, "", false
	}
	uid, err := strconv.ParseUint(u, 10, 64)
	if err != nil {
		return 0, "", false
	}
	if d == "_" {
		return uid, "", true
	}
	b, err := base64.RawURLEncoding.DecodeString(d)
	return uid, string(b), err == nil
}

// BucketConfig is the registrations bucket: one value per key (no
// history), replicated as configured, entries older than MaxTTL removed by
// the server (a device that never re-registers disappears).
func BucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: push.DeviceBucket, Description: "longlink device push tokens (offline/)",
		History: 1, TTL: MaxTTL, Replicas: max(1, replicas), Storage: jetstream.FileStorage}
}

// Writer writes registrations with nothing but publishes to
// $KV.LONGLINK_DEVICES.<key> (the gateway role may do only that: it cannot
// read anyone's tokens). The bucket must exist (the sender or the router's
// enqueuer creates it).
type Writer struct {
	nc      *nats.Conn
	timeout time.Duration
}

// NewWriter returns a Writer over nc.
func NewWriter(nc *nats.Conn) *Writer { return &Writer{nc: nc, timeout: 5 * time.Second} }

// ErrNoStore is returned when the registrations bucket does not answer.
var ErrNoStore = errors.New("offline: device registrations store unavailable")

func (w *Writer) publish(ctx context.Context, m *nats.Msg) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.timeout)
		defer cancel()
	}
	resp, err := w.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoStore, err)
	}
	var ack struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return fmt.Errorf("%w: bad answer %q", ErrNoStore, resp.Data)
	}
	if ack.Error != nil {
		return fmt.Errorf("%w: %s", ErrNoStore, ack.Error.Description)
	}
	return nil
}

// Put stores (replaces) the registration of (uid, device).
func (w *Writer) Put(ctx context.Context, uid uint64, device string, r Registration) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return w.publish(ctx, &nats.Msg{Subject: "$KV." + push.DeviceBucket + "." + Key(uid, device), Data: b})
}

// Delete removes the registration of (uid, device).
func (w *Writer) Delete(ctx context.Context, uid uint64, device string) error {
	m := nats.NewMsg("$KV." + push.DeviceBucket + "." + Key(uid, device))
	m.Header.Set("KV-Operation", "DEL")
	return w.publish(ctx, m)
}

// Device is one registered device of a user, as the mirror has it.
type Device struct {
	Device   string
	Reg      Registration
	Revision uint64 // the KV revision (a deletion is conditional on it)
}

// openNoRollup opens the KV bucket of cfg, creating it if absent, with a
// stream that refuses rollup headers. The gateway role may publish
// registrations (write-only), and one publish carrying "Nats-Rollup: all"
// would otherwise purge every user's registration from a KV stream (which
// allows rollups for Purge, never used here: deletions are DEL markers).
// An existing bucket gets cfg's replicas, history and TTL, as
// CreateOrUpdateKeyValue did, without turning rollups back on.
func openNoRollup(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) { // another process won the race
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
	}
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		return nil, err
	}
	sc := st.CachedInfo().Config
	want := sc
	want.AllowRollup = false
	want.Replicas = max(1, cfg.Replicas)
	want.MaxMsgsPerSubject = int64(max(1, cfg.History))
	want.MaxAge = cfg.TTL
	if want.AllowRollup != sc.AllowRollup || want.Replicas != sc.Replicas || want.MaxMsgsPerSubject != sc.MaxMsgsPerSubject || want.MaxAge != sc.MaxAge {
		if _, err := js.UpdateStream(ctx, want); err != nil {
			return nil, err
		}
	}
	return kv, nil
}

// Devices mirrors the registrations bucket in memory (a KV watch): the
// router's enqueuer asks it whether a user has any registered device (Has,
// on every notify), the sender which ones (Get). Goroutine-safe.
type Devices struct {
	kv     jetstream.KeyValue
	log    *slog.Logger
	shards [64]devShard
	ready  chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

type devShard struct {
	mu sync.RWMutex
	m  map[uint64][]Device
}

// OpenDevices creates the bucket if needed and starts mirroring it. It
// returns once the initial values are loaded (or ctx ends).
func OpenDevices(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger) (*Devices, error) {
	if log == nil {
		log = slog.Default()
	}
	kv, err := openNoRollup(ctx, js, BucketConfig(replicas))
	if err != nil {
		return nil, fmt.Errorf("offline: bucket %s: %w", push.DeviceBucket, err)
	}
	d := &Devices{kv: kv, log: log, ready: make(chan struct{}), done: make(chan struct{})}
	for i := range d.shards {
		d.shards[i].m = map[uint64][]Device{}
	}
	wctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	w, err := kv.WatchAll(wctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("offline: watching %s: %w", push.DeviceBucket, err)
	}
	go d.watch(w)
	select {
	case <-d.ready:
		return d, nil
	case <-ctx.Done():
		d.Close()
		return nil, fmt.Errorf("offline: loading %s: %w", push.DeviceBucket, ctx.Err())
	}
}

func (d *Devices) watch(w jetstream.KeyWatcher) {
	defer close(d.done)
	defer func() { _ = w.Stop() }()
	readied := false
	for e := range w.Updates() {
		if e == nil {
			if !readied {
				readied = true
				close(d.ready)
			}
			continue
		}
		uid, dev, ok := parseKey(e.Key())
		if !ok {
			continue
		}
		if e.Operation() != jetstream.KeyValuePut {
			d.remove(uid, dev)
			continue
		}
		var r Registration
		if json.Unmarshal(e.Value(), &r) != nil {
			continue
		}
		d.set(uid, Device{Device: dev, Reg: r, Revision: e.Revision()})
	}
	if !readied {
		close(d.ready)
	}
}

func (d *Devices) shard(uid uint64) *devShard { return &d.shards[uid%uint64(len(d.shards))] }

func (d *Devices) set(uid uint64, dv Device) {
	sh := d.shard(uid)
	sh.mu.Lock()
	l := sh.m[uid]
	for i := range l {
		if l[i].Device == dv.Device {
			l[i] = dv
			sh.mu.Unlock()
			return
		}
	}
	sh.m[uid] = append(l, dv)
	sh.mu.Unlock()
}

func (d *Devices) remove(uid uint64, dev string) {
	sh := d.shard(uid)
	sh.mu.Lock()
	l := sh.m[uid]
	for i := range l {
		if l[i].Device == dev {
			l = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(sh.m, uid)
	} else {
		sh.m[uid] = l
	}
	sh.mu.Unlock()
}

// Has reports whether uid has any registered device (no allocation).
func (d *Devices) Has(uid uint64) bool {
	sh := d.shard(uid)
	sh.mu.RLock()
	_, ok := sh.m[uid]
	sh.mu.RUnlock()
	return ok
}

// Get returns a copy of uid's registered devices.
func (d *Devices) Get(uid uint64) []Device {
	sh := d.shard(uid)
	sh.mu.RLock()
	l := append([]Device(nil), sh.m[uid]...)
	sh.mu.RUnlock()
	return l
}

// Len is the number of registered devices.
func (d *Devices) Len() int {
	n := 0
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.RLock()
		for _, l := range sh.m {
			n += len(l)
		}
		sh.mu.RUnlock()
	}
	return n
}

// Delete removes (uid, device) if its registration is still at revision
// rev (a provider said its token is invalid; a re-registration since then
// must survive).
func (d *Devices) Delete(ctx context.Context, uid uint64, device string, rev uint64) error {
	err := d.kv.Delete(ctx, Key(uid, device), jetstream.LastRevision(rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	return nil
}

// Close stops the watch.
func (d *Devices) Close() {
	d.cancel()
	<-d.done
}

// covered returns uid's registrations' fingerprint (the sum of their KV
// revisions: any put or delete changes it) and whether every registered
// device is in online. No allocation.
func (d *Devices) covered(uid uint64, online []string) (fp uint64, all bool) {
	sh := d.shard(uid)
	sh.mu.RLock()
	l := sh.m[uid]
	all = len(l) > 0
	for i := range l {
		fp += l[i].Revision
		if all && !slices.Contains(online, l[i].Device) {
			all = false
		}
	}
	sh.mu.RUnlock()
	return fp, all
}
