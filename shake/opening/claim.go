package opening

import (
	"errors"
	"fmt"
	"time"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/shake"
)

// ErrUnproven: a claim on the queue that does not prove itself (no sealed
// ticket, a ticket that fails verification, or fields and subject that
// disagree with it). Such a claim is never credited.
var ErrUnproven = errors.New("opening: claim does not prove itself")

// ClaimGrace is how much later than the ticket's deadline the stream may
// have stored a claim that the opener accepted in time.
const ClaimGrace = 30 * time.Second

// Claim is a verified claim: what the ledger credits. Every field comes from
// the verified sealed ticket and the stream, none from the message's own
// informational fields.
type Claim struct {
	Tag      uint32
	PacketID uint64
	Amount   shake.Money
	UID      uint64
	OpenedAt time.Time // the stream's timestamp of the claim
	Seq      uint64    // stream sequence
	Sealed   []byte    // the proof, kept for the export (reconcile re-checks it)
}

// VerifyClaim re-verifies a claim found on subject with stream timestamp at,
// exactly as the opener verified the OPEN: the sealed ticket authenticates
// under the seal keys, is bound to the claim's user, was not expired at
// the time the stream stored the claim, its ticket key passes the
// whitelist and blacklist, its record decrypts to a packet of the plan;
// and the subject and the message's fields name that same packet, amount
// and user. It needs only the key stores and the plan (no RPC, no
// database). Errors wrap ErrUnproven.
func VerifyClaim(v *shake.Verifier, subject string, p *pb.OpenedPacket, at time.Time) (Claim, error) {
	if len(p.Sealed) == 0 {
		return Claim{}, fmt.Errorf("%w: no sealed ticket", ErrUnproven)
	}
	o, err := v.Verify(p.Sealed, p.Uid, at)
	if errors.Is(err, shake.ErrExpired) {
		// The opener checked expiry at its own clock, before its publish
		// (retried for up to a few seconds) reached the stream.
		o, err = v.Verify(p.Sealed, p.Uid, at.Add(-ClaimGrace))
	}
	if err != nil {
		return Claim{}, fmt.Errorf("%w: %v", ErrUnproven, err)
	}
	tag := v.Plan().Tag
	if want := Subject(tag, o.PacketID); subject != want {
		return Claim{}, fmt.Errorf("%w: ticket is packet %d, published on %s", ErrUnproven, o.PacketID, subject)
	}
	if p.PlanTag != tag || p.PacketId != o.PacketID || p.AmountFen != uint64(o.Amount) {
		return Claim{}, fmt.Errorf("%w: fields (tag %d, packet %d, %d fen) disagree with the ticket", ErrUnproven, p.PlanTag, p.PacketId, p.AmountFen)
	}
	return Claim{Tag: tag, PacketID: o.PacketID, Amount: o.Amount, UID: o.UID, OpenedAt: at, Sealed: p.Sealed}, nil
}
