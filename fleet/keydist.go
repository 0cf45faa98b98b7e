package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Key distribution: an operator publishes the key files to a JetStream KV
// bucket (the NATS admin role writes it); every host's top process (the
// router role reads it, never the internet-facing workers) fetches them,
// writes them over its own files and reloads exactly as on SIGHUP, so the
// rotation rules of a file reload hold.
const (
	KeysBucket  = "LONGLINK_FLEET_KEYS" // KV bucket: one entry per key file
	SubjectKeys = "longlink.fleet.keys" // nudge after a publish: fetch now
)

// Distributed key entries (the key files' names without ".json").
const (
	KeyToken  = "token"  // auth keys.json
	KeyServer = "server" // server-keys.json (transport encryption)
	KeyFleet  = "fleet"  // fleet-keys.json (node lists)
)

// KeyNames lists the entries in the order they are applied.
var KeyNames = []string{KeyToken, KeyServer, KeyFleet}

// PublishKeys writes entries (name → file bytes) to the bucket, creating
// it (with replicas) if absent, then nudges the hosts. It returns each
// entry's revision.
func PublishKeys(ctx context.Context, nc *nats.Conn, replicas int, entries map[string][]byte) (map[string]uint64, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, KeysBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: KeysBucket, History: 5,
			Storage: jetstream.FileStorage, Replicas: max(replicas, 1), Description: "longlink key files for the fleet (docs/fleet.md)"})
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		return nil, fmt.Errorf("fleet: keys bucket: this NATS has no JetStream (a gateway's embedded NATS runs it only for offline push or shake): copy the key files to each host, or publish on a cluster with JetStream (%w)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: keys bucket: %w", err)
	}
	revs := map[string]uint64{}
	for _, name := range KeyNames {
		b, ok := entries[name]
		if !ok {
			continue
		}
		rev, err := kv.Put(ctx, name, b)
		if err != nil {
			return revs, fmt.Errorf("fleet: publish %s: %w", name, err)
		}
		revs[name] = rev
	}
	if err := nc.Publish(SubjectKeys, nil); err != nil {
		return revs, err
	}
	return revs, nc.FlushWithContext(ctx)
}

// KeyFollower fetches the distributed keys: at start (once connected),
// quickly again until a fetch succeeds, then every Poll, and at once on a
// nudge. Apply gets each entry whose revision is new to it.
type KeyFollower struct {
	nc    *nats.Conn
	poll  time.Duration
	apply func(name string, value []byte, rev uint64)
	log   *slog.Logger

	mu     sync.Mutex
	seen   map[string]uint64
	warned bool
	kick   chan struct{}
	ctx    context.Context // cancelled by Stop: ends a fetch in flight
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan struct{}
	sub    *nats.Subscription
}

// FollowKeys starts a follower on nc (router role). poll defaults to 30s.
func FollowKeys(nc *nats.Conn, poll time.Duration, log *slog.Logger, apply func(name string, value []byte, rev uint64)) (*KeyFollower, error) {
	if poll <= 0 {
		poll = 30 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	f := &KeyFollower{nc: nc, poll: poll, apply: apply, log: log, seen: map[string]uint64{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	sub, err := nc.Subscribe(SubjectKeys, func(*nats.Msg) {
		select {
		case f.kick <- struct{}{}:
		default:
		}
	})
	if err != nil {
		f.cancel()
		return nil, err
	}
	f.sub = sub
	// Before returning, so that what is published is on disk before the
	// gateway loads its files. A connection made with RetryOnFailedConnect
	// may not be up yet: a fetch now would fail and leave the host on its
	// own keys (lists its clients reject) until the next poll, so wait a
	// little for it, and retry quickly in the loop until a fetch succeeds.
	ok := false
	if waitConnected(nc, startWait) {
		ok = f.Fetch() == nil
	}
	go f.loop(ok)
	return f, nil
}

// startWait bounds how long FollowKeys waits for the NATS connection;
// until a fetch succeeds it is retried after firstRetry, doubling up to
// maxRetry (or the poll if shorter).
var (
	startWait  = 5 * time.Second
	firstRetry = 250 * time.Millisecond
	maxRetry   = 2 * time.Second
)

func waitConnected(nc *nats.Conn, d time.Duration) bool {
	end := time.Now().Add(d)
	for !nc.IsConnected() {
		if nc.IsClosed() || time.Now().After(end) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func (f *KeyFollower) loop(fetched bool) {
	defer close(f.done)
	retry := firstRetry
	wait := f.poll
	if !fetched {
		wait = retry
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		case <-f.kick: // Reset below: no stale tick since Go 1.23
		}
		if !fetched {
			// Not while disconnected: a request would sit in the
			// reconnect buffer for the fetch's whole timeout.
			fetched = f.nc.IsConnected() && f.Fetch() == nil
		} else {
			f.Fetch() // a later failure waits for the poll (or a nudge)
		}
		wait = f.poll
		if !fetched {
			wait = retry
			retry = min(2*retry, maxRetry, f.poll)
		}
		t.Reset(wait)
	}
}

// Fetch reads every entry once and applies the new ones. It fails when
// the bucket cannot be read (an absent bucket is not a failure: nothing
// is published).
func (f *KeyFollower) Fetch() error {
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	js, err := jetstream.New(f.nc)
	var kv jetstream.KeyValue
	if err == nil {
		kv, err = js.KeyValue(ctx, KeysBucket)
	}
	if err != nil {
		f.mu.Lock()
		warn := !f.warned && !errors.Is(err, jetstream.ErrBucketNotFound)
		f.warned = true
		f.mu.Unlock()
		switch {
		case !warn:
		case errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled):
			f.log.Info("fleet: this NATS has no JetStream: keys are not distributed (copy the key files, or use a cluster with JetStream)", "bucket", KeysBucket)
		default:
			f.log.Warn("fleet: cannot read the distributed keys (retrying)", "bucket", KeysBucket, "err", err)
		}
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil
		}
		return err
	}
	var failed error
	for _, name := range KeyNames {
		e, err := kv.Get(ctx, name)
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyNotFound) {
				failed = fmt.Errorf("fleet: distributed key %s: %w", name, err)
			}
			continue // not published
		}
		f.mu.Lock()
		fresh := e.Revision() > f.seen[name]
		if fresh {
			f.seen[name] = e.Revision()
		}
		f.mu.Unlock()
		if fresh {
			f.apply(name, e.Value(), e.Revision())
		}
	}
	return failed
}

// Stop ends the follower.
func (f *KeyFollower) Stop() {
	select {
	case <-f.stop:
		return
	default:
	}
	close(f.stop)
	f.cancel()
	<-f.done
	_ = f.sub.Unsubscribe()
}
