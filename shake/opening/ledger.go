package opening

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
// bbolt file. A batch of messages is credited in one transaction; bbolt
// fsyncs on commit; only then are the messages acknowledged. A crash
// between commit and ack redelivers them and the packet-id check skips
// them: idempotent by (plan tag, packet id). Never ack first.
//
// Buckets: "credited" (tag‖packet id → uid, amount, opened at, stream
// sequence) and "balance" (uid → fen). Safe for concurrent use.
type Ledger struct {
	db  *bolt.DB
	log *slog.Logger

	credited, duplicates, poison atomic.Uint64
	delay                        atomic.Int64 // artificial per-batch delay (tests: a slow ledger)

	// AckWait is how long a delivered message may stay unacknowledged
	// before JetStream redelivers it (after a ledger crash, say); set
	// before Run. Default 30s; it must exceed a batch's credit time.
	AckWait time.Duration
}

var (
	bucketCredited = []byte("credited")
	bucketBalance  = []byte("balance")
)

// OpenLedger opens (or creates) the ledger file. bbolt locks it: one
// process at a time.
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

// Close closes the file.
func (l *Ledger) Close() error { return l.db.Close() }

// SetDelay slows every batch by d (tests and drills: a slow payment side).
func (l *Ledger) SetDelay(d time.Duration) { l.delay.Store(int64(d)) }

func creditKey(tag uint32, pid uint64) []byte {
	k := make([]byte, 12)
	binary.BigEndian.PutUint32(k, tag)
	binary.BigEndian.PutUint64(k[4:], pid)
	return k
}

// Credit records a batch of opened packets in one durable transaction and
// returns how many were new (the rest were credited before).
func (l *Ledger) Credit(ps []*pb.OpenedPacket, seqs []uint64) (int, error) {
	n := 0
	err := l.db.Update(func(tx *bolt.Tx) error {
		n = 0
		cb, bb := tx.Bucket(bucketCredited), tx.Bucket(bucketBalance)
		for i, p := range ps {
			k := creditKey(p.PlanTag, p.PacketId)
			if cb.Get(k) != nil {
				continue
			}
			v := make([]byte, 32)
			binary.BigEndian.PutUint64(v, p.Uid)
			binary.BigEndian.PutUint64(v[8:], p.AmountFen)
			binary.BigEndian.PutUint64(v[16:], uint64(p.OpenedAtMs))
			if i < len(seqs) {
				binary.BigEndian.PutUint64(v[24:], seqs[i])
			}
			if err := cb.Put(k, v); err != nil {
				return err
			}
			uk := binary.BigEndian.AppendUint64(nil, p.Uid)
			var bal uint64
			if b := bb.Get(uk); b != nil {
				bal = binary.BigEndian.Uint64(b)
			}
			if err := bb.Put(uk, binary.BigEndian.AppendUint64(nil, bal+p.AmountFen)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	l.credited.Add(uint64(n))
	l.duplicates.Add(uint64(len(ps) - n))
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

// Run consumes until ctx ends: fetch up to batch messages, credit them in
// one transaction, then acknowledge them. Connection losses are retried.
func (l *Ledger) Run(ctx context.Context, js jetstream.JetStream, batch int) error {
	if batch <= 0 {
		batch = 256
	}
	var cons jetstream.Consumer
	for cons == nil {
		c, err := Consumer(ctx, js, l.AckWait)
		if err == nil {
			cons = c
			break
		}
		l.log.Warn("ledger: consumer not ready", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	ps := make([]*pb.OpenedPacket, 0, batch)
	seqs := make([]uint64, 0, batch)
	msgs := make([]jetstream.Msg, 0, batch)
	for ctx.Err() == nil {
		mb, err := cons.Fetch(batch, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			if ctx.Err() == nil {
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		ps, seqs, msgs = ps[:0], seqs[:0], msgs[:0]
		for m := range mb.Messages() {
			var p pb.OpenedPacket
			if err := proto.Unmarshal(m.Data(), &p); err != nil || p.AmountFen == 0 || p.AmountFen > uint64(shake.MaxPacketAmount) {
				l.poison.Add(1)
				l.log.Error("ledger: undecodable queue message, not credited", "subject", m.Subject())
				_ = m.Term()
				continue
			}
			md, _ := m.Metadata()
			var seq uint64
			if md != nil {
				seq = md.Sequence.Stream
			}
			ps, seqs, msgs = append(ps, &p), append(seqs, seq), append(msgs, m)
		}
		if len(ps) == 0 {
			continue
		}
		if d := time.Duration(l.delay.Load()); d > 0 {
			time.Sleep(d)
		}
		if _, err := l.Credit(ps, seqs); err != nil {
			l.log.Error("ledger: credit failed; messages will be redelivered", "err", err)
			for _, m := range msgs {
				_ = m.Nak()
			}
			continue
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
	Packets    int    `json:"packets_total"`
	AmountFen  uint64 `json:"amount_fen_total"`
	Users      int    `json:"users"`
}

// Stats returns counters and totals over the file.
func (l *Ledger) Stats() (LedgerStats, error) {
	s := LedgerStats{Credited: l.credited.Load(), Duplicates: l.duplicates.Load(), Poison: l.poison.Load()}
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
			return lw.Write(binary.BigEndian.Uint64(k[4:]), shake.Money(binary.BigEndian.Uint64(v[8:])), binary.BigEndian.Uint64(v), at)
		})
	})
	if err != nil {
		return n, err
	}
	return n, lw.Flush()
}
