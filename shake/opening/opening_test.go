package opening

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/shaketest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fixture struct {
	ev     *shaketest.Event
	sealer *shake.Sealer
	file   *shake.File
	url    string
	nc     *nats.Conn
	op     *Opener
	next   int
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	root := t.TempDir()
	ev := shaketest.Generate(t, root)
	ns := shaketest.JetStream(t, "127.0.0.1:0", filepath.Join(root, "js"))
	fx := &fixture{ev: ev, sealer: shake.NewSealer(ev.SealKeys, 1), url: ns.ClientURL()}
	f, err := shake.OpenFile(ev.Files()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fx.file = f
	fx.nc = fx.connect(t)
	fx.op = fx.opener(t, "op-1")
	return fx
}

func (fx *fixture) connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(fx.url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func (fx *fixture) opener(t testing.TB, name string) *Opener {
	t.Helper()
	v := shake.NewVerifier(fx.ev.SealKeys, fx.ev.Plan, fx.ev.Keys, time.Hour, time.Minute, nil, nil)
	op, err := NewOpener(context.Background(), OpenerConfig{Verifier: v, Conn: fx.connect(t), Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return op
}

func (fx *fixture) verifier() *shake.Verifier {
	return shake.NewVerifier(fx.ev.SealKeys, fx.ev.Plan, fx.ev.Keys, time.Hour, time.Minute, nil, nil)
}

// ledger opens a ledger at path that verifies claims against the fixture's event.
func (fx *fixture) ledger(t testing.TB, path string) *Ledger {
	t.Helper()
	l, err := OpenLedger(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	l.SetVerifier(fx.verifier())
	return l
}

// run runs l until the test ends (stopped before l is closed).
func (fx *fixture) run(t testing.TB, l *Ledger, batch int) {
	t.Helper()
	js, _ := jetstream.New(fx.connect(t))
	c, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = l.Run(c, js, batch); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// ticket dispenses the next record of slot 1 sealed for uid.
func (fx *fixture) ticket(uid uint64) ([]byte, shake.Ticket) {
	rec := fx.file.Record(fx.next)
	fx.next++
	t, err := shake.NewChecker(fx.ev.Plan, fx.ev.Keys, nil, nil).NewOpener().Open(rec)
	if err != nil {
		panic(err)
	}
	return fx.sealer.AppendSealed(nil, rec, uid, uint32(time.Now().Unix())), t
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestOpenClaimsOnceAndAnswersAgain(t *testing.T) {
	fx := newFixture(t)
	sealed, tk := fx.ticket(100)
	r := fx.op.Open(ctx(t), 100, sealed)
	if r.Code != OK || r.Amount != tk.Amount || r.PacketID != tk.PacketID || r.Again {
		t.Fatalf("first open %+v, ticket %+v", r, tk)
	}
	// A retry (say the reply was lost) gets the same answer, marked again.
	r2 := fx.op.Open(ctx(t), 100, sealed)
	if r2.Code != OK || r2.Amount != tk.Amount || !r2.Again {
		t.Fatalf("second open %+v", r2)
	}
	// Another user cannot open this ticket...
	if r := fx.op.Open(ctx(t), 101, sealed); r.Code != NotYours {
		t.Fatalf("other user: %+v", r)
	}
	// ...and even if the same record were dispensed twice (a failover
	// mistake), the second user finds it taken.
	rec := fx.file.Record(0)
	again := fx.sealer.AppendSealed(nil, rec, 101, uint32(time.Now().Unix()))
	if r := fx.op.Open(ctx(t), 101, again); r.Code != Taken {
		t.Fatalf("second dispensing to another user: %+v", r)
	}
	// One message in the queue.
	js, _ := jetstream.New(fx.nc)
	st, _ := js.Stream(ctx(t), StreamName)
	info, _ := st.Info(ctx(t))
	if info.State.Msgs != 1 {
		t.Fatalf("%d messages queued, want 1", info.State.Msgs)
	}
}

func TestOpenRejectsWithoutQueueing(t *testing.T) {
	fx := newFixture(t)
	sealed, tk := fx.ticket(7)
	bad := append([]byte(nil), sealed...)
	bad[20] ^= 1
	cases := []struct {
		name string
		uid  uint64
		b    []byte
		want Code
	}{
		{"tampered", 7, bad, Invalid},
		{"truncated", 7, sealed[:40], Invalid},
		{"empty", 7, nil, Invalid},
		{"not yours", 8, sealed, NotYours},
	}
	for _, c := range cases {
		if r := fx.op.Open(ctx(t), c.uid, c.b); r.Code != c.want {
			t.Fatalf("%s: %+v, want %v", c.name, r, c.want)
		}
	}
	// A ticket sealed by someone without our seal keys.
	other, _ := shake.RandomSealKeys(2)
	forged := shake.NewSealer(other, 1).AppendSealed(nil, fx.file.Record(1), 7, uint32(time.Now().Unix()))
	if r := fx.op.Open(ctx(t), 7, forged); r.Code != Invalid {
		t.Fatalf("forged seal: %+v", r)
	}
	// Expired.
	old := fx.sealer.AppendSealed(nil, fx.file.Record(2), 7, uint32(time.Now().Add(-2*time.Hour).Unix()))
	if r := fx.op.Open(ctx(t), 7, old); r.Code != Expired {
		t.Fatalf("expired: %+v", r)
	}
	// Blacklisted at runtime, then allowed again.
	fx.op.Verifier().SetKeyPolicy(nil, []uint16{tk.Key})
	if r := fx.op.Open(ctx(t), 7, sealed); r.Code != KeyRevoked {
		t.Fatalf("blacklisted: %+v", r)
	}
	fx.op.Verifier().SetKeyPolicy(nil, nil)
	js, _ := jetstream.New(fx.nc)
	st, _ := js.Stream(ctx(t), StreamName)
	if info, _ := st.Info(ctx(t)); info.State.Msgs != 0 {
		t.Fatalf("%d messages queued by rejected opens", info.State.Msgs)
	}
	if r := fx.op.Open(ctx(t), 7, sealed); r.Code != OK {
		t.Fatalf("after lifting the blacklist: %+v", r)
	}
}

// Many openers (separate connections) race for the same packets presented
// by different users: exactly one wins each packet.
func TestClaimAtomicAcrossOpeners(t *testing.T) {
	fx := newFixture(t)
	ops := []*Opener{fx.op, fx.opener(t, "op-2"), fx.opener(t, "op-3")}
	const packets = 60
	wins := make([]int, packets)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for p := 0; p < packets; p++ {
		rec := fx.file.Record(100 + p)
		for u := 0; u < 3; u++ {
			sealed := fx.sealer.AppendSealed(nil, rec, uint64(1000+u), uint32(time.Now().Unix()))
			wg.Add(1)
			go func(p, u int) {
				defer wg.Done()
				r := ops[u].Open(context.Background(), uint64(1000+u), sealed)
				switch r.Code {
				case OK:
					mu.Lock()
					wins[p]++
					mu.Unlock()
				case Taken:
				default:
					t.Errorf("packet %d user %d: %+v", p, u, r)
				}
			}(p, u)
		}
	}
	wg.Wait()
	for p, w := range wins {
		if w != 1 {
			t.Fatalf("packet %d won %d times", p, w)
		}
	}
}

func TestLedgerCreditsOnceAndReconciles(t *testing.T) {
	fx := newFixture(t)
	dir := t.TempDir()
	l := fx.ledger(t, filepath.Join(dir, "ledger.db"))
	fx.run(t, l, 64)

	want := map[uint64]shake.Money{}
	for i := 0; i < 300; i++ {
		uid := uint64(i % 7)
		sealed, tk := fx.ticket(uid)
		if r := fx.op.Open(ctx(t), uid, sealed); r.Code != OK {
			t.Fatal(r)
		}
		want[uid] += tk.Amount
		if i%50 == 0 { // retries change nothing
			fx.op.Open(ctx(t), uid, sealed)
		}
	}
	waitCredited(t, l, 300)
	got, _ := l.Balances()
	for uid, m := range want {
		if got[uid] != m {
			t.Fatalf("uid %d balance %d, want %d", uid, got[uid], m)
		}
	}
	// Replaying messages (a crash between commit and ack) credits nothing.
	st, _ := l.Stats()
	n, err := l.Credit(nil)
	if err != nil || n != 0 {
		t.Fatal(n, err)
	}
	if st.Packets != 300 {
		t.Fatalf("stats %+v", st)
	}
	csv := filepath.Join(dir, "ledger.csv")
	exportAndReconcile(t, l, fx.ev, csv, 300)
}

func waitCredited(t testing.TB, l *Ledger, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := l.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Packets >= n {
			if st.Packets > n {
				t.Fatalf("%d packets credited, want %d", st.Packets, n)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d credited", st.Packets, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exportAndReconcile(t testing.TB, l *Ledger, ev *shaketest.Event, path string, n int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	cnt, err := l.Export(f, ev.Plan.Tag)
	f.Close()
	if err != nil || cnt != n {
		t.Fatalf("exported %d (%v), want %d", cnt, err, n)
	}
	rep, err := ev.Reconcile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.LedgerEntries != uint64(n) {
		t.Fatalf("reconcile: %+v", rep)
	}
}

func TestLedgerIdempotentCredit(t *testing.T) {
	fx := newFixture(t)
	l := fx.ledger(t, filepath.Join(t.TempDir(), "l.db"))
	sealed, tk := fx.ticket(5)
	if r := fx.op.Open(ctx(t), 5, sealed); r.Code != OK {
		t.Fatal(r)
	}
	js, _ := jetstream.New(fx.nc)
	st, _ := js.Stream(ctx(t), StreamName)
	m, err := st.GetLastMsgForSubject(ctx(t), Subject(fx.ev.Plan.Tag, tk.PacketID))
	if err != nil {
		t.Fatal(err)
	}
	p := decode(t, m.Data)
	c, err := VerifyClaim(fx.verifier(), m.Subject, p[0], m.Time)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		n, err := l.Credit([]Claim{c})
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 1, false: 0}[i == 0]; n != want {
			t.Fatalf("delivery %d credited %d", i, n)
		}
	}
	if b, _ := l.Balance(5); b != tk.Amount {
		t.Fatalf("balance %d, want %d", b, tk.Amount)
	}
}

// A slow ledger delays crediting; opening is not slowed.
func TestSlowLedgerDoesNotSlowOpening(t *testing.T) {
	fx := newFixture(t)
	l := fx.ledger(t, filepath.Join(t.TempDir(), "l.db"))
	l.SetDelay(time.Second)
	fx.run(t, l, 16)
	start := time.Now()
	for i := 0; i < 100; i++ {
		sealed, _ := fx.ticket(1)
		if r := fx.op.Open(ctx(t), 1, sealed); r.Code != OK {
			t.Fatal(r)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("100 opens took %v behind a slow ledger", d)
	}
	if st, _ := l.Stats(); st.Packets == 100 {
		t.Fatal("the slow ledger was not behind; the test proves nothing")
	}
	l.SetDelay(0)
	waitCredited(t, l, 100)
}

func TestRemoteOpenerService(t *testing.T) {
	fx := newFixture(t)
	sub, err := Serve(fx.connect(t), fx.op, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	rem := &Remote{NC: fx.connect(t), Node: "gw-1"}
	sealed, tk := fx.ticket(9)
	if r := rem.Open(ctx(t), 9, sealed); r.Code != OK || r.Amount != tk.Amount {
		t.Fatalf("remote open %+v", r)
	}
	if r := rem.Open(ctx(t), 10, sealed); r.Code != NotYours {
		t.Fatalf("remote open by another user %+v", r)
	}
	// No opener service: Unavailable when the deadline passes.
	_ = sub.Unsubscribe()
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if r := rem.Open(c, 9, sealed); r.Code != Unavailable || r.RetryAfter == 0 {
		t.Fatalf("without openers %+v", r)
	}
}

func decode(t testing.TB, b []byte) []*pb.OpenedPacket {
	t.Helper()
	var p pb.OpenedPacket
	if err := proto.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return []*pb.OpenedPacket{&p}
}

// BenchmarkOpen: verify + claim/enqueue (one JetStream publish, file store)
// + answer, from parallel goroutines, against an embedded server. Each
// iteration opens a fresh packet while any are left (10,000 in the
// fixture); run with -benchtime 5000x.
func BenchmarkOpen(b *testing.B) {
	fx := newFixture(b)
	var sealed [][]byte
	for _, path := range fx.ev.Files() {
		f, err := shake.OpenFile(path)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < f.Len(); i++ {
			sealed = append(sealed, fx.sealer.AppendSealed(nil, f.Record(i), 1, uint32(time.Now().Unix())))
		}
		defer f.Close()
	}
	var next atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)-1) % len(sealed)
			if r := fx.op.Open(context.Background(), 1, sealed[i]); r.Code != OK {
				b.Error(r)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "opens/s")
}
