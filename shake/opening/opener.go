// Package opening owns the online second half of shake red packets: the
// opener (OPEN's local verification, then the exactly-once claim and the
// durable enqueue in one JetStream publish), the opener service for when
// openers run apart from the gateways (NATS request/reply), and the ledger
// (the reference payment side) that credits balances exactly once from the
// queue into an embedded bbolt store and exports the CSV that
// `longlink shake reconcile` reads.
//
// Claim and queue are the same thing: an opened packet is published once on
// its own subject shake.opened.<plan tag>.<packet id> of the SHAKE_OPENED
// stream, with "expected last sequence for this subject = 0", and the stream
// itself refuses a second message per subject (MaxMsgsPerSubject 1,
// DiscardNewPerSubject). JetStream orders writes to a stream, so of any two
// openers (anywhere) exactly one wins, and the winner's message is the
// durable queue entry: there is no state where a packet is claimed but not
// queued, and no time window (unlike message-id dedupe, which forgets after
// its window). A retry or a second OPEN by the same user finds the existing
// message and answers with its amount again.
//
// Concurrency: Opener, Ledger and the service are safe for concurrent use;
// Opener.Open blocks (it talks to NATS) and must not run on an event loop.
package opening

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/shake"
)

// Stream and subject names.
const (
	StreamName    = "SHAKE_OPENED"
	SubjectPrefix = "shake.opened."
	ServiceSubj   = "longlink.shake.open" // opener service requests
	ServiceQueue  = "openers"
	LedgerDurable = "ledger"
)

// Code is an OpenRsp code.
type Code uint32

// OpenRsp codes (proto/shake.proto).
const (
	OK          Code = 0
	Invalid     Code = 1 // forged or altered
	NotYours    Code = 2 // dispensed to another user
	Expired     Code = 3
	KeyRevoked  Code = 4 // ticket key blacklisted or not whitelisted
	Taken       Code = 5 // already opened by someone else
	Unavailable Code = 6 // the queue cannot be reached: retry
	Busy        Code = 7 // too many opens waiting: retry
	NoEvent     Code = 8 // this server runs no shake event
)

var codeNames = [...]string{"ok", "invalid", "not_yours", "expired", "key_revoked", "taken", "unavailable", "busy", "no_event"}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "code_" + strconv.Itoa(int(c))
}

// Result is the answer to one OPEN.
type Result struct {
	Code       Code
	Amount     shake.Money
	PacketID   uint64
	Batch      uint32
	Again      bool // this user had opened it before: same answer again
	RetryAfter time.Duration
}

// Rsp turns r into the wire message.
func (r Result) Rsp() *pb.OpenRsp {
	return &pb.OpenRsp{Code: uint32(r.Code), AmountFen: uint64(r.Amount), PacketId: r.PacketID, Batch: r.Batch,
		Again: r.Again, Message: msgs[min(int(r.Code), len(msgs)-1)], RetryAfterMs: uint32(r.RetryAfter.Milliseconds())}
}

// FromRsp turns a wire answer back into a Result.
func FromRsp(m *pb.OpenRsp) Result {
	return Result{Code: Code(m.Code), Amount: shake.Money(m.AmountFen), PacketID: m.PacketId, Batch: m.Batch,
		Again: m.Again, RetryAfter: time.Duration(m.RetryAfterMs) * time.Millisecond}
}

var msgs = []string{"", "invalid ticket", "this packet was dispensed to another user", "ticket expired",
	"ticket key revoked", "already opened", "try again later", "busy: try again later", "no shake event here", ""}

// Interface is what the gateway calls: an in-process Opener or a Remote one.
type Interface interface {
	Open(ctx context.Context, uid uint64, sealed []byte) Result
}

// Opener verifies and claims. Safe for concurrent use.
type Opener struct {
	v      *shake.Verifier
	js     jetstream.JetStream
	stream jetstream.Stream
	name   string
	clock  func() time.Time

	// Counters by outcome, for metrics.
	counts [len(codeNames)]atomic.Uint64
}

// OpenerConfig configures an Opener.
type OpenerConfig struct {
	Verifier *shake.Verifier
	Conn     *nats.Conn
	Name     string           // this opener's name, recorded in each queued packet
	Replicas int              // stream replicas when creating it (default 1)
	MaxAge   time.Duration    // keep queued packets this long (default 0: forever); must exceed the ticket TTL plus the ledger's worst lag
	Clock    func() time.Time // tests
}

// StreamConfig is the SHAKE_OPENED stream: one message per packet, kept
// (limits retention), file storage.
func StreamConfig(replicas int, maxAge time.Duration) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:                 StreamName,
		Subjects:             []string{SubjectPrefix + ">"},
		Retention:            jetstream.LimitsPolicy,
		Storage:              jetstream.FileStorage,
		Replicas:             max(replicas, 1),
		MaxAge:               maxAge,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		AllowDirect:          true,
	}
}

// EnsureStream creates or updates the stream.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int, maxAge time.Duration) (jetstream.Stream, error) {
	return js.CreateOrUpdateStream(ctx, StreamConfig(replicas, maxAge))
}

// NewOpener connects to JetStream and makes sure the stream exists.
func NewOpener(ctx context.Context, cfg OpenerConfig) (*Opener, error) {
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, err
	}
	st, err := EnsureStream(ctx, js, cfg.Replicas, cfg.MaxAge)
	if err != nil {
		return nil, fmt.Errorf("opening: stream %s: %w", StreamName, err)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Opener{v: cfg.Verifier, js: js, stream: st, name: cfg.Name, clock: cfg.Clock}, nil
}

// Verifier returns the opener's verifier (for runtime key policy changes).
func (o *Opener) Verifier() *shake.Verifier { return o.v }

// Counts returns how many OPENs ended with each code.
func (o *Opener) Counts() map[string]uint64 {
	m := map[string]uint64{}
	for i := range o.counts {
		if n := o.counts[i].Load(); n > 0 {
			m[Code(i).String()] = n
		}
	}
	return m
}

// Subject is the queue subject of one packet.
func Subject(tag uint32, pid uint64) string {
	return SubjectPrefix + strconv.FormatUint(uint64(tag), 10) + "." + strconv.FormatUint(pid, 10)
}

// Open verifies the sealed ticket for uid by local computation, then claims
// and enqueues the packet with one publish, and answers with the amount
// once the queue has it durably. It retries transient queue failures until
// ctx ends (then Unavailable: the client retries; a publish that did land
// is found by the retry and answered as "again").
func (o *Opener) Open(ctx context.Context, uid uint64, sealed []byte) Result {
	r := o.open(ctx, uid, sealed)
	o.counts[min(int(r.Code), len(o.counts)-1)].Add(1)
	return r
}

func (o *Opener) open(ctx context.Context, uid uint64, sealed []byte) Result {
	now := o.clock()
	t, err := o.v.Verify(sealed, uid, now)
	switch {
	case err == nil:
	case errors.Is(err, shake.ErrNotYours):
		return Result{Code: NotYours}
	case errors.Is(err, shake.ErrExpired):
		return Result{Code: Expired}
	case errors.Is(err, shake.ErrKeyBlacklisted), errors.Is(err, shake.ErrKeyNotAllowed):
		return Result{Code: KeyRevoked}
	default:
		return Result{Code: Invalid}
	}
	tag := o.v.Plan().Tag
	subj := Subject(tag, t.PacketID)
	body, _ := proto.Marshal(&pb.OpenedPacket{
		PlanTag: tag, PacketId: t.PacketID, AmountFen: uint64(t.Amount), Batch: t.Batch, KeyId: uint32(t.Key),
		Uid: uid, IssuedAtS: t.Issued, Instance: uint32(t.Instance), OpenedAtMs: now.UnixMilli(), Opener: o.name,
	})
	res := Result{Code: OK, Amount: t.Amount, PacketID: t.PacketID, Batch: t.Batch}
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = o.js.Publish(pctx, subj, body, jetstream.WithExpectLastSequencePerSubject(0))
		cancel()
		if err == nil {
			return res
		}
		if claimedAlready(err) {
			return o.existing(ctx, subj, uid, res)
		}
		if ctx.Err() != nil {
			return Result{Code: Unavailable, RetryAfter: time.Second}
		}
		select {
		case <-ctx.Done():
			return Result{Code: Unavailable, RetryAfter: time.Second}
		case <-time.After(min(time.Duration(attempt+1)*100*time.Millisecond, time.Second)):
		}
	}
}

// claimedAlready reports whether the stream refused the publish because the
// packet's subject already holds a message.
func claimedAlready(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant, 10077:
			return true // 10077: maximum messages per subject exceeded
		}
	}
	return false
}

// existing answers an OPEN whose packet is already queued: the same user
// gets the amount again, anyone else "taken".
func (o *Opener) existing(ctx context.Context, subj string, uid uint64, res Result) Result {
	for {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := o.stream.GetLastMsgForSubject(gctx, subj)
		cancel()
		if err == nil {
			var p pb.OpenedPacket
			if proto.Unmarshal(m.Data, &p) != nil {
				return Result{Code: Unavailable, RetryAfter: time.Second}
			}
			if p.Uid != uid {
				return Result{Code: Taken}
			}
			res.Again = true
			return res
		}
		select {
		case <-ctx.Done():
			return Result{Code: Unavailable, RetryAfter: time.Second}
		case <-time.After(100 * time.Millisecond):
		}
	}
}
