package opening

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/shake"
)

// Ledger is the reference payment side: it consumes the SHAKE_OPENED
// stream and credits each packet's amount to its user exactly once, in a
// bbolt file. It credits only claims that prove themselves (VerifyClaim:
// the sealed ticket the user opened, re-verified here with the event's key
// stores; amount and user come from it, never from the message), and only
// while it holds the ledger lease (lease.go): of any number of ledgers on
// one stream, exactly one credits. A batch of claims is credited in one
// transaction; bbolt fsyncs on commit; only then are the messages
// acknowledged. A crash between commit and ack redelivers them and the
// packet-id check skips them: idempotent by (plan tag, packet id). Never
// ack first.
//
// Buckets: "credited" (tag‖packet id → uid, amount, opened at, stream
// sequence, sealed ticket) and "balance" (uid → fen). Safe for concurrent
// use.
type Ledger struct {
	db  *bolt.DB
	log *slog.Logger
	v   atomic.Pointer[shake.Verifier]

	credited, duplicates, poison, rejected, fenced atomic.Uint64
	delay                                          atomic.Int64 // artificial per-batch delay (tests: a slow ledger)
	leaseHeld                                      atomic.Bool
	lease                                          atomic.Pointer[lease]

	// AckWait is how long a delivered message may stay unacknowledged
	// before JetStream redelivers it (after a ledger crash, say); set
	// before Run. Default 30s; it must exceed a batch's credit time.
	AckWait time.Duration
	// LeaseTTL is the ledger lease's length (default DefaultLeaseTTL);
	// every ledger on a stream must use the same. Set before Run.
	LeaseTTL time.Duration
	// Name identifies this ledger in the lease (default host/pid).
	Name string
	// Replicas for the lease bucket when creating it.
	Replicas int

	// Fault, if set, is called at named points of Run (tests: the chaos
	// test's crash points and planted mutants). Production leaves it nil.
	Fault func(point string) FaultAction
}

// FaultAction is what a Fault hook asks Run to do at a point.
type FaultAction int

// Fault actions.
const (
	FaultNone        FaultAction = iota
	FaultCrash                   // stop at once, as a kill -9 would (nothing after this point happens)
	FaultAckFirst                // planted mutant (ledger): acknowledge the batch before committing it, then crash
	FaultAnswerFirst             // planted mutant (opener): answer OK without waiting for the JetStream ack
)

// Fault points of Run.
const (
	PointBeforeCommit = "ledger.before-commit" // verified batch in hand, nothing committed
	PointAfterCommit  = "ledger.after-commit"  // credits are durable, nothing acknowledged
)

var (
	bucketCredited = []byte("credited")
	bucketBalance  = []byte("balance")
)

// OpenLedger opens (or creates) the ledger file. bbolt locks it: one
// process at a time. SetVerifier must be called before Run.
func OpenLedger(path string, log *slog.Logger) (*Ledger, error) {
	if log == nil {
		log = slog.Default()
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("ledger %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketCredited, bucketBalance} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &Ledger{db: db, log: log}, nil
}

// SetVerifier sets the verifier claims are re-verified with: the event's
// seal keys, plan and ticket keys, the ticket TTL and the ticket-key
// whitelist and blacklist the openers use.
func (l *Ledger) SetVerifier(v *shake.Verifier) { l.v.Store(v) }

// Close closes the file.
func (l *Ledger) Close() error { return l.db.Close() }

// SetDelay slows every batch by d (tests and drills: a slow payment side).
func (l *Ledger) SetDelay(d time.Duration) { l.delay.Store(int64(d)) }

// PauseLease stops (true) or resumes lease renewals (tests: a process
// stalled as a whole, not only its credit path).
func (l *Ledger) PauseLease(p bool) {
	if ls := l.lease.Load(); ls != nil {
		ls.paused.Store(p)
	}
}

// HoldsLease reports whether this ledger holds the lease now.
func (l *Ledger) HoldsLease() bool {
	ls := l.lease.Load()
	return ls != nil && ls.valid()
}

func creditKey(tag uint32, pid uint64) []byte {
	k := make([]byte, 12)
	binary.BigEndian.PutUint32(k, tag)
	binary.BigEndian.PutUint64(k[4:], pid)
	return k
}

// Credit records a batch of verified claims in one durable transaction and
// returns how many were new (the rest were credited before).
func (l *Ledger) Credit(cs []Claim) (int, error) { return l.credit(cs, nil) }

// credit commits only if fence (checked last, inside the transaction)
// passes.
func (l *Ledger) credit(cs []Claim, fence func() error) (int, error) {
	n := 0
	err := l.db.Update(func(tx *bolt.Tx) error {
		n = 0
		cb, bb := tx.Bucket(bucketCredited), tx.Bucket(bucketBalance)
		for _, c := range cs {
			k := creditKey(c.Tag, c.PacketID)
			if cb.Get(k) != nil {
				continue
			}
			v := make([]byte, 32, 32+len(c.Sealed))
			binary.BigEndian.PutUint64(v, c.UID)
			binary.BigEndian.PutUint64(v[8:], uint64(c.Amount))
			binary.BigEndian.PutUint64(v[16:], uint64(c.OpenedAt.UnixMilli()))
			binary.BigEndian.PutUint64(v[24:], c.Seq)
			v = append(v, c.Sealed...)
			if err := cb.Put(k, v); err != nil {
				return err
			}
			uk := binary.BigEndian.AppendUint64(nil, c.UID)
			var bal uint64
			if b := bb.Get(uk); b != nil {
				bal = binary.BigEndian.Uint64(b)
			}
			if err := bb.Put(uk, binary.BigEndian.AppendUint64(nil, bal+uint64(c.Amount))); err != nil {
				return err
			}
			n++
		}
		if fence != nil {
			return fence() // the last thing before the commit: an error rolls back
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	l.credited.Add(uint64(n))
	l.duplicates.Add(uint64(len(cs) - n))
	return n, nil
}

// Consumer creates (or finds) the ledger's durable pull consumer.
func Consumer(ctx context.Context, js jetstream.JetStream, ackWait time.Duration) (jetstream.Consumer, error) {
	if ackWait <= 0 {
		ackWait = 30 * time.Second
	}
	return js.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:       LedgerDurable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxAckPending: 8192,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
}

// Run consumes until ctx ends: acquire the ledger lease (waiting while
// another ledger holds it), then fetch up to batch messages, verify each
// claim, credit the proven ones in one transaction fenced by the lease,
// then acknowledge them. Unproven claims are counted, logged and
// terminated (never redelivered, never credited; they stay in the stream
// for an operator). Connection losses are retried.
func (l *Ledger) Run(ctx context.Context, js jetstream.JetStream, batch int) error {
	if l.v.Load() == nil {
		return errors.New("ledger: no claim verifier (SetVerifier): it would have no way to prove claims")
	}
	if batch <= 0 {
		batch = 256
	}
	ttl := l.LeaseTTL
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	name := l.Name
	if name == "" {
		h, _ := os.Hostname()
		name = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	retry := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(500 * time.Millisecond):
			return true
		}
	}
	var ls *lease
	for ls == nil {
		kv, err := leaseBucket(ctx, js, ttl, l.Replicas)
		if err == nil {
			ls = &lease{kv: kv, ttl: ttl, base: time.Now(), holder: []byte(name + "/" + strconv.FormatInt(time.Now().UnixNano(), 36))}
			break
		}
		if errors.Is(err, ErrLeaseMismatch) {
			return err
		}
		l.log.Warn("ledger: lease bucket not ready", "err", err)
		if !retry() {
			return ctx.Err()
		}
	}
	l.lease.Store(ls)
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ls.release(rctx)
		cancel()
	}()
	var cons jetstream.Consumer
	for cons == nil {
		c, err := Consumer(ctx, js, l.AckWait)
		if err == nil {
			cons = c
			break
		}
		l.log.Warn("ledger: consumer not ready", "err", err)
		if !retry() {
			return ctx.Err()
		}
	}
	cs := make([]Claim, 0, batch)
	msgs := make([]jetstream.Msg, 0, batch)
	var keepCancel context.CancelFunc = func() {}
	defer func() { keepCancel() }()
	for ctx.Err() == nil {
		if !ls.valid() {
			keepCancel()
			if l.leaseHeld.Swap(false) {
				l.log.Warn("ledger: lease lost; another ledger may credit now", "holder", name)
			}
			ok, err := ls.tryAcquire(ctx)
			if err != nil || !ok {
				if err != nil {
					l.log.Warn("ledger: lease", "err", err)
				}
				if !retry() {
					break
				}
				continue
			}
			l.leaseHeld.Store(true)
			l.log.Info("ledger: lease acquired; crediting", "holder", name)
			keepCancel = ls.startKeeping(ctx)
		}
		mb, err := cons.Fetch(batch, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			if ctx.Err() == nil {
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		cs, msgs = cs[:0], msgs[:0]
		v := l.v.Load()
		for m := range mb.Messages() {
			var p pb.OpenedPacket
			if err := proto.Unmarshal(m.Data(), &p); err != nil {
				l.poison.Add(1)
				l.log.Error("ledger: undecodable queue message, not credited", "subject", m.Subject())
				_ = m.TermWithReason("undecodable")
				continue
			}
			md, err := m.Metadata()
			if err != nil {
				continue // cannot tell when the stream stored it: leave it for redelivery
			}
			c, err := VerifyClaim(v, m.Subject(), &p, md.Timestamp)
			if err != nil {
				l.rejected.Add(1)
				l.log.Error("ledger: unproven claim rejected, not credited", "subject", m.Subject(), "seq", md.Sequence.Stream, "err", err)
				_ = m.TermWithReason("unproven claim")
				continue
			}
			c.Seq = md.Sequence.Stream
			cs, msgs = append(cs, c), append(msgs, m)
		}
		if len(cs) == 0 {
			continue
		}
		if d := time.Duration(l.delay.Load()); d > 0 {
			time.Sleep(d)
		}
		if l.Fault != nil && l.Fault(PointBeforeCommit) == FaultAckFirst {
			for _, m := range msgs {
				_ = m.DoubleAck(ctx)
			}
			return errors.New("ledger: planted mutant: acknowledged, then crashed before " + PointAfterCommit)
		}
		if _, err := l.credit(cs, ls.fence); err != nil {
			if errors.Is(err, ErrLeaseLost) {
				// Not ours to credit any more: no ack, no nak; the new
				// holder gets them after AckWait.
				l.fenced.Add(uint64(len(cs)))
				l.log.Warn("ledger: lease ran out before commit; batch left to the lease holder", "claims", len(cs))
				continue
			}
			l.log.Error("ledger: credit failed; messages will be redelivered", "err", err)
			for _, m := range msgs {
				_ = m.Nak()
			}
			continue
		}
		if l.Fault != nil && l.Fault(PointAfterCommit) == FaultCrash {
			return errors.New("ledger: crashed at " + PointAfterCommit)
		}
		for _, m := range msgs { // only after the commit is durable
			_ = m.Ack()
		}
	}
	return ctx.Err()
}

// LedgerStats counts what the ledger did since it was opened, plus totals.
type LedgerStats struct {
	Credited   uint64 `json:"credited"`
	Duplicates uint64 `json:"duplicates_skipped"`
	Poison     uint64 `json:"poison"`
	Rejected   uint64 `json:"rejected_unproven"` // claims that did not verify: never credited
	Fenced     uint64 `json:"fenced"`            // claims left uncredited because the lease ran out before commit
	LeaseHeld  bool   `json:"lease_held"`
	Packets    int    `json:"packets_total"`
	AmountFen  uint64 `json:"amount_fen_total"`
	Users      int    `json:"users"`
}

// Stats returns counters and totals over the file.
func (l *Ledger) Stats() (LedgerStats, error) {
	s := LedgerStats{Credited: l.credited.Load(), Duplicates: l.duplicates.Load(), Poison: l.poison.Load(),
		Rejected: l.rejected.Load(), Fenced: l.fenced.Load(), LeaseHeld: l.HoldsLease()}
	err := l.db.View(func(tx *bolt.Tx) error {
		s.Packets = tx.Bucket(bucketCredited).Stats().KeyN
		s.Users = tx.Bucket(bucketBalance).Stats().KeyN
		return tx.Bucket(bucketCredited).ForEach(func(_, v []byte) error {
			s.AmountFen += binary.BigEndian.Uint64(v[8:])
			return nil
		})
	})
	return s, err
}

// Balance returns uid's credited total in fen.
func (l *Ledger) Balance(uid uint64) (shake.Money, error) {
	var m shake.Money
	err := l.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketBalance).Get(binary.BigEndian.AppendUint64(nil, uid)); b != nil {
			m = shake.Money(binary.BigEndian.Uint64(b))
		}
		return nil
	})
	return m, err
}

// Balances returns every user's balance.
func (l *Ledger) Balances() (map[uint64]shake.Money, error) {
	out := map[uint64]shake.Money{}
	err := l.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBalance).ForEach(func(k, v []byte) error {
			out[binary.BigEndian.Uint64(k)] = shake.Money(binary.BigEndian.Uint64(v))
			return nil
		})
	})
	return out, err
}

// Export writes the credited packets of plan tag (0: all) in the ledger
// CSV format that shake.Reconcile reads.
func (l *Ledger) Export(w io.Writer, tag uint32) (int, error) {
	lw, err := shake.NewLedgerWriter(w)
	if err != nil {
		return 0, err
	}
	n := 0
	err = l.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCredited).ForEach(func(k, v []byte) error {
			if len(k) != 12 || len(v) < 24 {
				return errors.New("ledger: corrupt entry")
			}
			if tag != 0 && binary.BigEndian.Uint32(k) != tag {
				return nil
			}
			at := time.UnixMilli(int64(binary.BigEndian.Uint64(v[16:]))).UTC().Format("2006-01-02T15:04:05.000Z07:00")
			n++
			var sealed []byte
			if len(v) > 32 {
				sealed = v[32:]
			}
			return lw.WriteClaim(binary.BigEndian.Uint64(k[4:]), shake.Money(binary.BigEndian.Uint64(v[8:])), binary.BigEndian.Uint64(v), at, sealed)
		})
	})
	if err != nil {
		return n, err
	}
	return n, lw.Flush()
}
