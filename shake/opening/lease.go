package opening

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The ledger lease: exactly one ledger may credit. It is one key in a
// JetStream KV bucket whose TTL is the lease's length. A ledger acquires it
// with Create (succeeds only if the key is absent: never held, or expired),
// keeps it with revision-checked Updates (which fail once anyone else has
// written it), and only while it holds it does it fetch or commit credits.
//
// Fencing: the holder counts its lease as valid only until
// (time the last successful renewal was sent) + TTL - margin, on its own
// monotonic clock. The server expires the key no sooner than TTL after it
// stored that renewal, which is after it was sent, so the old holder's
// last commit decision precedes any new holder's acquisition by at least
// the margin. The check runs inside the bbolt transaction, just before its
// commit: a holder that stalls (GC, SIGSTOP, a slow disk) past its lease
// rolls its batch back and leaves those claims to the new holder.
const (
	LeaseBucket = "SHAKE_LEDGER_LEASE"
	leaseKey    = "holder"
	// DefaultLeaseTTL is the lease length; renewals every quarter of it.
	DefaultLeaseTTL = 10 * time.Second
)

// ErrLeaseLost: this ledger no longer holds the lease (or its lease ran out
// before a commit); the batch is not credited.
var ErrLeaseLost = errors.New("opening: ledger lease lost")

// ErrLeaseMismatch: the lease bucket exists with another lease length.
var ErrLeaseMismatch = errors.New("opening: ledger lease length differs from the lease bucket's")

type lease struct {
	kv     jetstream.KeyValue
	holder []byte
	ttl    time.Duration
	base   time.Time     // monotonic origin
	rev    atomic.Uint64 // revision of our last write; 0: not held
	until  atomic.Int64  // valid until base+until (monotonic)
	paused atomic.Bool   // tests: renewals stop (a stalled process)
}

// leaseBucket finds or creates the bucket; an existing bucket with another
// TTL is refused (two ledgers must agree on what a lease means).
func leaseBucket(ctx context.Context, js jetstream.JetStream, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, LeaseBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: LeaseBucket, TTL: ttl, History: 1,
			Storage: jetstream.FileStorage, Replicas: max(replicas, 1)})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, LeaseBucket)
		}
	}
	if err != nil {
		return nil, err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, err
	}
	if st.TTL() != ttl {
		return nil, fmt.Errorf("%w: bucket %s has TTL %v, this ledger wants %v: run every ledger with the same lease", ErrLeaseMismatch, LeaseBucket, st.TTL(), ttl)
	}
	return kv, nil
}

func (l *lease) margin() time.Duration { return l.ttl / 2 }

func (l *lease) valid() bool {
	return l.rev.Load() != 0 && time.Since(l.base) < time.Duration(l.until.Load())
}

// fence is the commit-time check.
func (l *lease) fence() error {
	if !l.valid() {
		return ErrLeaseLost
	}
	return nil
}

// tryAcquire makes one attempt; false if someone else holds the lease.
func (l *lease) tryAcquire(ctx context.Context) (bool, error) {
	sent := time.Since(l.base)
	rev, err := l.kv.Create(ctx, leaseKey, l.holder)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.until.Store(int64(sent + l.ttl - l.margin()))
	l.rev.Store(rev)
	return true, nil
}

// renew extends the lease; ErrLeaseLost if someone else wrote it.
func (l *lease) renew(ctx context.Context) error {
	rev := l.rev.Load()
	if rev == 0 {
		return ErrLeaseLost
	}
	sent := time.Since(l.base)
	nrev, err := l.kv.Update(ctx, leaseKey, l.holder, rev)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || errors.Is(err, jetstream.ErrKeyNotFound) {
			l.rev.Store(0)
			return ErrLeaseLost
		}
		return err // transient: the lease lapses by itself if this goes on
	}
	l.until.Store(int64(sent + l.ttl - l.margin()))
	l.rev.Store(nrev)
	return nil
}

// keep renews every quarter TTL until ctx ends or the lease is lost.
func (l *lease) keep(ctx context.Context) {
	t := time.NewTicker(l.ttl / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.paused.Load() {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, l.ttl/4)
		err := l.renew(rctx)
		cancel()
		if errors.Is(err, ErrLeaseLost) {
			return
		}
	}
}

// startKeeping runs keep on its own goroutine; the function stops it.
func (l *lease) startKeeping(ctx context.Context) context.CancelFunc {
	kctx, cancel := context.WithCancel(ctx)
	go l.keep(kctx)
	return cancel
}

// release gives the lease up at once (a clean stop), if still ours.
func (l *lease) release(ctx context.Context) {
	if rev := l.rev.Swap(0); rev != 0 {
		_ = l.kv.Delete(ctx, leaseKey, jetstream.LastRevision(rev))
	}
}
