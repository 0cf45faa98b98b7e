package opening

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/shake"
)

// Claims published straight on the bus (not by an opener) are never
// credited unless they prove themselves; they are counted and terminated,
// not redelivered forever. The reproduction: a forged OpenedPacket
// for a real, not yet dispensed packet at the maximum amount.
func TestForgedClaimsAreNotCredited(t *testing.T) {
	fx := newFixture(t)
	js, _ := jetstream.New(fx.nc)
	publish := func(subj string, p *pb.OpenedPacket) {
		t.Helper()
		b, _ := proto.Marshal(p)
		if _, err := js.Publish(ctx(t), subj, b, jetstream.WithExpectLastSequencePerSubject(0)); err != nil {
			t.Fatalf("%s: %v", subj, err)
		}
	}
	tag := fx.ev.Plan.Tag
	// 1. No proof at all, the maximum amount, a packet nobody was given.
	publish(Subject(tag, 3000), &pb.OpenedPacket{PlanTag: tag, PacketId: 3000, AmountFen: uint64(shake.MaxPacketAmount), Uid: 666})
	// 2. Garbage as proof.
	publish(Subject(tag, 3001), &pb.OpenedPacket{PlanTag: tag, PacketId: 3001, AmountFen: 100, Uid: 666, Sealed: make([]byte, shake.SealedSize)})
	// 3. A real ticket of user 7, claimed for user 666.
	sealed7, tk7 := fx.ticket(7)
	publish(Subject(tag, tk7.PacketID), &pb.OpenedPacket{PlanTag: tag, PacketId: tk7.PacketID, AmountFen: uint64(tk7.Amount), Uid: 666, Sealed: sealed7})
	// 4. A real ticket of user 666 published on another packet's subject.
	sealedA, tkA := fx.ticket(666)
	publish(Subject(tag, 3002), &pb.OpenedPacket{PlanTag: tag, PacketId: 3002, AmountFen: uint64(tkA.Amount), Uid: 666, Sealed: sealedA})
	// 5. A real ticket of user 666 with the amount field inflated.
	sealedB, tkB := fx.ticket(666)
	publish(Subject(tag, tkB.PacketID), &pb.OpenedPacket{PlanTag: tag, PacketId: tkB.PacketID, AmountFen: uint64(tkB.Amount) + 1000, Uid: 666, Sealed: sealedB})
	// 6. An expired ticket of user 666, correct in every field.
	rec := fx.file.Record(fx.next)
	fx.next++
	old := fx.sealer.AppendSealed(nil, rec, 666, uint32(time.Now().Add(-3*time.Hour).Unix()))
	tkOld, _ := shake.NewChecker(fx.ev.Plan, fx.ev.Keys, nil, nil).NewOpener().Open(rec)
	publish(Subject(tag, tkOld.PacketID), &pb.OpenedPacket{PlanTag: tag, PacketId: tkOld.PacketID, AmountFen: uint64(tkOld.Amount), Uid: 666, Sealed: old})
	// And one honest open.
	sealed, tk := fx.ticket(8)
	if r := fx.op.Open(ctx(t), 8, sealed); r.Code != OK {
		t.Fatal(r)
	}

	l := fx.ledger(t, filepath.Join(t.TempDir(), "l.db"))
	fx.run(t, l, 64)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := l.Stats()
		if st.Packets >= 1 && st.Rejected >= 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger stats %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // any (wrong) late credit would show now
	st, _ := l.Stats()
	if st.Packets != 1 || st.AmountFen != uint64(tk.Amount) || st.Rejected != 6 {
		t.Fatalf("stats %+v: want only packet %d (%d fen) credited and 6 claims rejected", st, tk.PacketID, tk.Amount)
	}
	if b, _ := l.Balance(666); b != 0 {
		t.Fatalf("the forger was credited %s", b)
	}
	// Rejected claims are terminated, not left to redeliver forever.
	cons, err := js.Consumer(ctx(t), StreamName, LedgerDurable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx(t))
	if err != nil || info.NumAckPending != 0 || info.NumPending != 0 {
		t.Fatalf("consumer %+v %v: rejected claims still pending", info, err)
	}
	// The opener does not answer a real owner "again" on a squatted subject.
	if r := fx.op.Open(ctx(t), 7, sealed7); r.Code != Taken || fx.op.squatted.Load() != 1 {
		t.Fatalf("owner of a squatted packet: %+v (squatted %d)", r, fx.op.squatted.Load())
	}
}

func TestVerifyClaimTakesEverythingFromTheTicket(t *testing.T) {
	fx := newFixture(t)
	v := fx.verifier()
	sealed, tk := fx.ticket(9)
	tag := fx.ev.Plan.Tag
	good := &pb.OpenedPacket{PlanTag: tag, PacketId: tk.PacketID, AmountFen: uint64(tk.Amount), Uid: 9, Sealed: sealed}
	c, err := VerifyClaim(v, Subject(tag, tk.PacketID), good, time.Now())
	if err != nil || c.UID != 9 || c.Amount != tk.Amount || c.PacketID != tk.PacketID {
		t.Fatalf("%+v %v", c, err)
	}
	// Stored by the stream a little after the deadline (the opener's retries): accepted within the grace.
	late := fx.sealer.AppendSealed(nil, fx.file.Record(fx.next), 9, uint32(time.Now().Add(-time.Hour-ClaimGrace/2).Unix()))
	tl, _ := shake.NewChecker(fx.ev.Plan, fx.ev.Keys, nil, nil).NewOpener().Open(fx.file.Record(fx.next))
	if _, err := VerifyClaim(v, Subject(tag, tl.PacketID), &pb.OpenedPacket{PlanTag: tag, PacketId: tl.PacketID, AmountFen: uint64(tl.Amount), Uid: 9, Sealed: late}, time.Now()); err != nil {
		t.Fatalf("claim within the grace: %v", err)
	}
	// A blacklisted ticket key is refused, like the opener does.
	v.SetKeyPolicy(nil, []uint16{tk.Key})
	if _, err := VerifyClaim(v, Subject(tag, tk.PacketID), good, time.Now()); !errors.Is(err, ErrUnproven) {
		t.Fatalf("blacklisted key: %v", err)
	}
}

// Starting a gateway (or anything else) must not reset the claim stream:
// create only if absent, refuse weaker settings, switch on DenyPurge and
// DenyDelete.
func TestEnsureStreamNeverWeakens(t *testing.T) {
	fx := newFixture(t) // the fixture's opener created the stream
	js, _ := jetstream.New(fx.nc)
	st, err := js.Stream(ctx(t), StreamName)
	if err != nil {
		t.Fatal(err)
	}
	// An operator's change to the stream (here a description; in the issue,
	// replicas 3) survives another start.
	cfg := st.CachedInfo().Config
	cfg.Description = "edited by ops"
	if _, err := js.UpdateStream(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureStream(ctx(t), js, 1, 0, quiet); err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx(t))
	if info.Config.Description != "edited by ops" || !info.Config.DenyPurge || !info.Config.DenyDelete {
		t.Fatalf("stream config reset: %+v", info.Config)
	}
	// Nobody can purge the claims or delete one.
	if err := st.Purge(ctx(t)); err == nil {
		t.Fatal("the claim stream was purged")
	}
	if err := st.DeleteMsg(ctx(t), 1); err == nil {
		t.Fatal("a claim was deleted")
	}
	// A start asking for more durability than the stream has is refused,
	// naming the setting.
	_, err = EnsureStream(ctx(t), js, 3, 0, quiet)
	if !errors.Is(err, ErrStreamWeaker) || !strings.Contains(err.Error(), "replicas 1, want 3") {
		t.Fatalf("replicas 3 against a 1-replica stream: %v", err)
	}
	// Less durability than the stream has: kept, with a warning.
	_, warn := compareStream(jetstream.StreamConfig{Replicas: 3, Storage: jetstream.FileStorage, Subjects: []string{SubjectPrefix + ">"},
		MaxMsgsPerSubject: 1, Discard: jetstream.DiscardNew, DiscardNewPerSubject: true}, StreamConfig(1, 0))
	if len(warn) != 1 || !strings.Contains(warn[0], "replicas 3") {
		t.Fatalf("warnings %v", warn)
	}
	// A stream that would expire claims (MaxAge) while this process keeps them forever: refused.
	problems, _ := compareStream(StreamConfig(1, time.Hour), StreamConfig(1, 0))
	if len(problems) != 1 || !strings.Contains(problems[0], "max_age") {
		t.Fatalf("problems %v", problems)
	}
}

// Two ledgers on one stream, one of them stalled longer than AckWait: the
// issue's reproduction credited 20 claims twice (20 + 20). Only the lease
// holder credits.
func TestTwoLedgersCreditOnce(t *testing.T) {
	for _, whole := range []bool{false, true} {
		name := map[bool]string{false: "credit path stalled", true: "whole process stalled"}[whole]
		t.Run(name, func(t *testing.T) {
			fx := newFixture(t)
			for i := 0; i < 20; i++ {
				sealed, _ := fx.ticket(uint64(i % 3))
				if r := fx.op.Open(ctx(t), uint64(i%3), sealed); r.Code != OK {
					t.Fatal(r)
				}
			}
			dir := t.TempDir()
			a, b := fx.ledger(t, filepath.Join(dir, "a.db")), fx.ledger(t, filepath.Join(dir, "b.db"))
			for _, l := range []*Ledger{a, b} {
				l.AckWait, l.LeaseTTL = time.Second, time.Second
			}
			a.Name, b.Name = "a", "b"
			a.SetDelay(2500 * time.Millisecond) // longer than AckWait (and than the lease)
			fx.run(t, a, 64)
			waitFor(t, a.HoldsLease)
			if whole {
				a.PauseLease(true) // no renewals either: the lease runs out
			}
			fx.run(t, b, 64)
			deadline := time.Now().Add(15 * time.Second)
			for {
				sa, _ := a.Stats()
				sb, _ := b.Stats()
				if sa.Packets+sb.Packets > 20 {
					t.Fatalf("credited %d + %d packets of 20", sa.Packets, sb.Packets)
				}
				done := sa.Packets+sb.Packets == 20 && (!whole || sa.Fenced > 0)
				if done && time.Now().After(deadline.Add(-11*time.Second)) { // ≥ 4 s in: past every redelivery
					t.Logf("a: %+v; b: %+v", sa, sb)
					if whole && (sb.Packets != 20 || sa.Packets != 0) {
						t.Fatalf("whole stall: a %d, b %d; want the new holder b to credit all", sa.Packets, sb.Packets)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("a %+v, b %+v", sa, sb)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

func waitFor(t *testing.T, f func() bool) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !f() {
		if c.Err() != nil {
			t.Fatal("condition not reached")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Ledgers that disagree on the lease length would disagree on when a lease
// ends: the second is refused.
func TestLedgerLeaseLengthMustAgree(t *testing.T) {
	fx := newFixture(t)
	a := fx.ledger(t, filepath.Join(t.TempDir(), "a.db"))
	a.LeaseTTL = time.Second
	fx.run(t, a, 8)
	waitFor(t, a.HoldsLease)
	b := fx.ledger(t, filepath.Join(t.TempDir(), "b.db"))
	b.LeaseTTL = 2 * time.Second
	js, _ := jetstream.New(fx.nc)
	if err := b.Run(ctx(t), js, 8); !errors.Is(err, ErrLeaseMismatch) {
		t.Fatalf("second ledger with another lease: %v", err)
	}
	// A ledger without a verifier refuses to run at all.
	c, err := OpenLedger(filepath.Join(t.TempDir(), "c.db"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Run(ctx(t), js, 8); err == nil || !strings.Contains(err.Error(), "verifier") {
		t.Fatalf("ledger without a verifier: %v", err)
	}
}
