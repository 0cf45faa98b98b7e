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
	"log/slog"
	"strconv"
	"strings"
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
	log    *slog.Logger

	// Counters by outcome, for metrics.
	counts   [len(codeNames)]atomic.Uint64
	squatted atomic.Uint64 // packets whose subject held an unproven claim

	// Fault, if set, is called at named points of Open (tests: the chaos
	// test's crash points and planted mutants). Set before the first Open.
	Fault func(point string) FaultAction
}

// Fault points of Opener.Open.
const (
	PointBeforePublish = "opener.before-publish" // verified, nothing published
	PointAfterPublish  = "opener.after-publish"  // the claim is durable, no answer yet
)

// OpenerConfig configures an Opener.
type OpenerConfig struct {
	Verifier *shake.Verifier
	Conn     *nats.Conn
	Name     string // this opener's name, recorded in each queued packet
	Replicas int    // stream replicas (default DefaultReplicas); an existing stream with fewer is refused
	Log      *slog.Logger
	MaxAge   time.Duration    // keep queued packets this long (default 0: forever); must exceed the ticket TTL plus the ledger's worst lag
	Clock    func() time.Time // tests
}

// DefaultReplicas is the one replicas setting of the claim stream and the
// lease bucket: the gateway (--shake-replicas), `shake opener -replicas`
// and `shake ledger -replicas` all default to it, and whoever starts first
// creates the stream with it; later starts never lower it (EnsureStream).
const DefaultReplicas = 1

// StreamConfig is the SHAKE_OPENED stream: one message per packet, kept
// (limits retention), file storage, no purge and no message deletion (a
// claim, once stored, is the record of who won the packet).
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
		DenyDelete:           true,
		DenyPurge:            true,
	}
}

// ErrStreamWeaker: the claim stream exists with settings weaker than this
// process was started with; it is not changed.
var ErrStreamWeaker = errors.New("opening: the claim stream exists with weaker settings than wanted")

// EnsureStream creates the stream if it is absent. If it exists it is
// never weakened: a setting less durable than wanted (fewer replicas,
// memory storage, a shorter MaxAge) or one that breaks exactly-once
// (subjects, per-subject limit, discard policy) is refused with an error
// naming it; a stronger one is kept with a warning; DenyDelete/DenyPurge
// are switched on if missing (JetStream allows only that direction).
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int, maxAge time.Duration, log *slog.Logger) (jetstream.Stream, error) {
	if log == nil {
		log = slog.Default()
	}
	want := StreamConfig(replicas, maxAge)
	st, err := js.Stream(ctx, StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			st, err = js.Stream(ctx, StreamName)
		} else {
			return st, err
		}
	}
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	have := info.Config
	problems, warnings := compareStream(have, want)
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: stream %s: %s (raise them on the stream, e.g. `nats stream edit`, or start with the same settings)",
			ErrStreamWeaker, StreamName, strings.Join(problems, "; "))
	}
	for _, w := range warnings {
		log.Warn("opening: stream "+StreamName+" kept as it is", "setting", w)
	}
	if !have.DenyDelete || !have.DenyPurge {
		have.DenyDelete, have.DenyPurge = true, true
		// Only an admin may update the stream (push/auth.go): an older
		// stream without the flags is still guarded by the NATS
		// permissions (nobody but an admin may purge or delete), so say it
		// and go on.
		if up, err := js.UpdateStream(ctx, have); err != nil {
			log.Warn("opening: stream "+StreamName+" lacks deny_delete/deny_purge and this role may not set them: set them as the NATS admin (nats stream edit)", "err", err)
		} else {
			st = up
			log.Info("opening: stream " + StreamName + ": deny_delete and deny_purge switched on")
		}
	}
	return st, nil
}

// compareStream lists what in have is weaker than want (problems) or just
// different (warnings).
func compareStream(have, want jetstream.StreamConfig) (problems, warnings []string) {
	switch {
	case have.Replicas < want.Replicas:
		problems = append(problems, fmt.Sprintf("replicas %d, want %d", have.Replicas, want.Replicas))
	case have.Replicas > want.Replicas:
		warnings = append(warnings, fmt.Sprintf("replicas %d (this process was started with %d)", have.Replicas, want.Replicas))
	}
	if have.Storage != jetstream.FileStorage {
		problems = append(problems, "storage "+have.Storage.String()+", want file")
	}
	switch {
	case have.MaxAge != 0 && (want.MaxAge == 0 || have.MaxAge < want.MaxAge):
		problems = append(problems, fmt.Sprintf("max_age %v, want %v (0: forever)", have.MaxAge, want.MaxAge))
	case have.MaxAge != want.MaxAge:
		warnings = append(warnings, fmt.Sprintf("max_age %v (this process was started with %v)", have.MaxAge, want.MaxAge))
	}
	if len(have.Subjects) != 1 || have.Subjects[0] != want.Subjects[0] {
		problems = append(problems, fmt.Sprintf("subjects %v, want %v", have.Subjects, want.Subjects))
	}
	if have.MaxMsgsPerSubject != 1 || have.Discard != jetstream.DiscardNew || !have.DiscardNewPerSubject {
		problems = append(problems, "max_msgs_per_subject/discard_new_per_subject not 1/true: a packet could be claimed twice")
	}
	if have.Retention != jetstream.LimitsPolicy {
		problems = append(problems, "retention "+have.Retention.String()+", want limits")
	}
	return problems, warnings
}

// NewOpener connects to JetStream and makes sure the stream exists.
func NewOpener(ctx context.Context, cfg OpenerConfig) (*Opener, error) {
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, err
	}
	st, err := EnsureStream(ctx, js, max(cfg.Replicas, DefaultReplicas), cfg.MaxAge, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("opening: stream %s: %w", StreamName, err)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Opener{v: cfg.Verifier, js: js, stream: st, name: cfg.Name, clock: cfg.Clock, log: cfg.Log}, nil
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
	if n := o.squatted.Load(); n > 0 {
		m["squatted_unproven"] = n // packet subjects found holding an unproven claim
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
		Sealed: sealed, // the proof the ledger re-verifies
	})
	res := Result{Code: OK, Amount: t.Amount, PacketID: t.PacketID, Batch: t.Batch}
	if o.Fault != nil && o.Fault(PointBeforePublish) == FaultAnswerFirst {
		return res // planted mutant: OK before the claim is durable (never publishes)
	}
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = o.js.Publish(pctx, subj, body, jetstream.WithExpectLastSequencePerSubject(0))
		cancel()
		if err == nil {
			if o.Fault != nil && o.Fault(PointAfterPublish) == FaultCrash {
				return Result{Code: Unavailable, RetryAfter: time.Second} // the hook killed the process; a test stand-in
			}
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
			if _, err := VerifyClaim(o.v, subj, &p, m.Time); err != nil {
				// Someone published on the claim subject without a valid
				// ticket (NATS permissions should make this impossible). It
				// will never be credited; the packet is lost to its owner
				// until an operator looks: say so loudly.
				o.squatted.Add(1)
				o.log.Error("opening: packet subject holds an unproven claim; it will not be credited", "subject", subj, "err", err)
				return Result{Code: Taken}
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
