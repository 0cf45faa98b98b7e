package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/panjf2000/gnet/v2"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/opening"
	"github.com/longlink/longlink/shake/shaketest"
	"github.com/longlink/longlink/shake/shaketest/live"
)

type shakeEnv struct {
	ev  *shaketest.Event
	iss *shake.Issuer
	op  *opening.Opener
	nc  *nats.Conn
	cfg *ShakeConfig
}

// newShakeEnv serves the test event (shaketest/live) and wraps it as the
// gateway's shake configuration.
func newShakeEnv(t testing.TB, speed float64) *shakeEnv {
	t.Helper()
	e := live.Serve(t, speed, "gw-test")
	return &shakeEnv{ev: e.Event, iss: e.Issuer, op: e.Opener, nc: e.LedgerNC,
		cfg: &ShakeConfig{Issuer: e.Issuer, Opener: e.Opener, Verifier: e.Verifier}}
}

func (w *wire) shake(seq uint16) *pb.ShakeRsp {
	w.t.Helper()
	w.sendFrame(codec.CmdShake, seq, &pb.Shake{})
	f := w.expect(codec.CmdShakeRsp, 2*time.Second)
	var r pb.ShakeRsp
	if err := proto.Unmarshal(f.Body, &r); err != nil || f.Seq != seq {
		w.t.Fatalf("bad SHAKE_RESP (seq %d): %v", f.Seq, err)
	}
	return &r
}

func (w *wire) open(seq uint16, ticket []byte) *pb.OpenRsp {
	w.t.Helper()
	w.sendFrame(codec.CmdOpen, seq, &pb.Open{Ticket: ticket})
	f := w.expect(codec.CmdOpenRsp, 5*time.Second)
	var r pb.OpenRsp
	if err := proto.Unmarshal(f.Body, &r); err != nil || f.Seq != seq {
		w.t.Fatalf("bad OPEN_RESP (seq %d): %v", f.Seq, err)
	}
	return &r
}

// shakeTicket shakes until a ticket comes.
func (w *wire) shakeTicket() []byte {
	w.t.Helper()
	for i := 0; i < 200; i++ {
		r := w.shake(uint16(i))
		if r.Result == uint32(shake.ShakeTicket) {
			if len(r.Ticket) != shake.SealedSize {
				w.t.Fatalf("ticket of %d bytes", len(r.Ticket))
			}
			return r.Ticket
		}
		if r.RetryAfterMs == 0 {
			w.t.Fatal("a no-packet reply without a retry hint")
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.t.Fatal("no ticket after 200 shakes")
	return nil
}

func TestShakeOpenCreditReconcile(t *testing.T) {
	env := newShakeEnv(t, 1000)
	s := startServer(t, func(c *Config) { c.Shake = env.cfg })
	alice, bob := dialWire(t, s.Addr()), dialWire(t, s.Addr())
	alice.auth(token(t, 42, "a", time.Hour), "a")
	bob.auth(token(t, 43, "b", time.Hour), "b")

	var want shake.Money
	var tickets [][]byte
	for i := 0; i < 20; i++ {
		tk := alice.shakeTicket()
		r := alice.open(uint16(1000+i), tk)
		if r.Code != 0 || r.AmountFen == 0 || r.Again {
			t.Fatalf("open: %v", r)
		}
		want += shake.Money(r.AmountFen)
		tickets = append(tickets, tk)
	}
	// The same ticket again: same amount, marked again, not credited twice.
	r0 := alice.open(2000, tickets[0])
	if r0.Code != 0 || !r0.Again {
		t.Fatalf("second open of the same ticket: %v", r0)
	}
	// Bob cannot open Alice's ticket (transfer), nor a tampered one.
	if r := bob.open(1, tickets[1]); r.Code != uint32(opening.NotYours) {
		t.Fatalf("bob opening alice's ticket: %v", r)
	}
	bad := bytes.Clone(tickets[2])
	bad[30] ^= 4
	if r := alice.open(2001, bad); r.Code != uint32(opening.Invalid) {
		t.Fatalf("tampered ticket: %v", r)
	}
	if r := alice.open(2002, []byte("short")); r.Code != uint32(opening.Invalid) {
		t.Fatalf("short ticket: %v", r)
	}

	// The ledger credits exactly what was opened, and reconciles.
	dir := t.TempDir()
	l, err := opening.OpenLedger(filepath.Join(dir, "ledger.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.SetVerifier(env.ev.Verifier()) // the ledger re-verifies every claim
	js, _ := jetstream.New(env.nc)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = l.Run(ctx, js, 64); close(done) }()
	defer func() { cancel(); <-done }()
	checkFor(t, 10*time.Second, func() error {
		if b, _ := l.Balance(42); b != want {
			return errorf("balance %d, want %d", b, want)
		}
		return nil
	})
	csv := filepath.Join(dir, "ledger.csv")
	f, _ := os.Create(csv)
	n, err := l.Export(f, env.ev.Plan.Tag)
	f.Close()
	if err != nil || n != 20 {
		t.Fatalf("export %d %v", n, err)
	}
	rep, err := env.ev.Reconcile(csv)
	if err != nil || !rep.OK() || rep.Opened.Amount != want {
		t.Fatalf("reconcile %+v %v", rep, err)
	}
}

func TestShakeWithoutEvent(t *testing.T) {
	s := startServer(t, nil)
	w := dialWire(t, s.Addr())
	w.auth(token(t, 1, "d", time.Hour), "d")
	r := w.shake(7)
	if r.Result != uint32(shake.ShakeIdle) || r.RetryAfterMs != 60000 || len(r.Ticket) != 0 {
		t.Fatalf("shake without an event: %v", r)
	}
	o := w.open(8, make([]byte, shake.SealedSize))
	if o.Code != uint32(opening.NoEvent) {
		t.Fatalf("open without an event: %v", o)
	}
}

func TestShakeNeedsAuth(t *testing.T) {
	s := startServer(t, nil)
	w := dialWire(t, s.Addr())
	w.sendFrame(codec.CmdShake, 1, &pb.Shake{})
	w.expectClose(codec.CodeNotAuthed, 2*time.Second)
}

func TestShakeAdminSwitches(t *testing.T) {
	env := newShakeEnv(t, 1)
	s := startServer(t, func(c *Config) { c.Shake = env.cfg; c.AdminToken = "tok" })
	h := s.AdminHandler()
	do := func(path, body string, want int) ShakeStatus {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		if body == "" {
			req = httptest.NewRequest(http.MethodGet, path, nil)
		}
		req.Header.Set("Authorization", "Bearer tok") // switch endpoints need the admin token
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Fatalf("%s %s: %d %s", path, body, rec.Code, rec.Body)
		}
		var st ShakeStatus
		_ = json.Unmarshal(rec.Body.Bytes(), &st)
		return st
	}
	if st := do("/shake/status", "", 200); st.Issuer == nil || st.Issuer.Slot != 1 {
		t.Fatalf("status %+v", st)
	}
	if st := do("/shake/speed", `{"speed": 3}`, 200); st.Issuer.Speed != 3 {
		t.Fatalf("speed %+v", st.Issuer)
	}
	do("/shake/speed", `{"speed": -1}`, 400)
	if st := do("/shake/limit", `{"per_s": 100}`, 200); st.Issuer.Limit != 100 {
		t.Fatalf("limit %+v", st.Issuer)
	}
	st := do("/shake/degrade", `{"min_interval_ms": 5000, "probability_permille": 200}`, 200)
	if !st.Issuer.Degraded || st.Issuer.Hint.ProbPermille != 200 || st.Issuer.Hint.MinIntervalMS != 5000 {
		t.Fatalf("degrade %+v", st.Issuer)
	}
	// Every reply now carries the degrade hint.
	w := dialWire(t, s.Addr())
	w.auth(token(t, 5, "d", time.Hour), "d")
	if r := w.shake(1); r.MinIntervalMs != 5000 || r.ProbabilityPermille != 200 {
		t.Fatalf("reply under degrade %v", r)
	}
	if st := do("/shake/degrade", `{"auto": true}`, 200); st.Issuer.Degraded {
		t.Fatal("degrade not lifted")
	}
	if st := do("/shake/down", `{"instance": 1, "down": true}`, 200); len(st.Issuer.Down) != 1 {
		t.Fatalf("down %+v", st.Issuer)
	}
	if st := do("/shake/keys", `{"deny": [0, 1]}`, 200); len(st.Deny) != 2 {
		t.Fatalf("keys %+v", st)
	}
	do("/shake/nonsense", `{}`, 400)
}

func FuzzParseOpen(f *testing.F) {
	b, _ := proto.Marshal(&pb.Open{Ticket: make([]byte, shake.SealedSize)})
	f.Add(b)
	f.Add([]byte{0x0a, 0xff})
	f.Add([]byte{0x08, 0x01, 0x0a, 0x01, 0x02})
	f.Fuzz(func(t *testing.T, data []byte) {
		ticket, ok := parseOpen(data)
		var ref pb.Open
		if proto.Unmarshal(data, &ref) != nil {
			return
		}
		if !ok || !bytes.Equal(ticket, ref.Ticket) {
			t.Fatalf("parseOpen %x ok=%v, library %x", ticket, ok, ref.Ticket)
		}
	})
}

func TestShakeReplyEncodingMatchesProto(t *testing.T) {
	env := newShakeEnv(t, 1000)
	s, _ := New(Config{Keys: testKeys, Shake: env.cfg})
	defer s.shake.stop()
	time.Sleep(50 * time.Millisecond) // a refill tick
	env.iss.SetDegrade(&shake.ShakeHint{MinIntervalMS: 300, ProbPermille: 500, RetryAfterMS: 700})
	fr := s.shake.appendShakeRsp(nil, 9, 77)
	f, n, err := codec.Split(fr, 0)
	if err != nil || n != len(fr) || f.Cmd != codec.CmdShakeRsp || f.Seq != 77 {
		t.Fatal(err)
	}
	var r pb.ShakeRsp
	if err := proto.Unmarshal(f.Body, &r); err != nil {
		t.Fatal(err)
	}
	if r.Result != 0 || len(r.Ticket) != shake.SealedSize || r.MinIntervalMs != 300 || r.ProbabilityPermille != 500 || r.RetryAfterMs != 700 {
		t.Fatalf("decoded %v", &r)
	}
}

// shakeLoopServer is a gateway with an issuer that always has tokens, and a
// fake authenticated connection, for the on-loop benchmark.
func shakeLoopServer(tb testing.TB) (*Server, *fakeConn, []byte) {
	env := newShakeEnv(tb, 1000)
	s, err := New(Config{Keys: testKeys, MaxFrameRate: 1 << 30, Shake: env.cfg})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.shake.stop)
	_ = env.iss.SetSpeed(1000)
	time.Sleep(50 * time.Millisecond)
	frame := codec.AppendFrame(nil, codec.CmdShake, 0, 1, nil)
	fc := &fakeConn{in: frame}
	c := &conn{gc: fc, uid: 1, device: "d"}
	c.state.Store(stateAuthed)
	fc.ctx = c
	s.wheel.Add(&c.hb, c, s.idleTicks(c.network), 1<<31)
	s.cfg.MaxFrameRate = 1 << 15
	return s, fc, frame
}

// BenchmarkShakeOnLoop: one SHAKE through OnTraffic as the event loop runs
// it: decode, flood check, touch, quota token, cursor, GCM seal, reply
// encoding, write. Tickets run out after the slot's 6,000; the rest are
// "no packet" replies, so the figure of interest is BenchmarkShakeTicketOnLoop.
func BenchmarkShakeOnLoop(b *testing.B) {
	s, fc, _ := shakeLoopServer(b)
	b.ReportAllocs()
	for b.Loop() {
		fc.ctx.(*conn).frames = 0
		if s.OnTraffic(fc) != gnet.None {
			b.Fatal("closed")
		}
	}
}

// BenchmarkShakeTicketOnLoop: dispense + seal + encode of a ticket reply,
// the loop's whole per-shake work short of the socket write.
func BenchmarkShakeTicketOnLoop(b *testing.B) {
	s, _, _ := shakeLoopServer(b)
	buf := make([]byte, 0, 128)
	iss := s.shake.cfg.Issuer
	b.ReportAllocs()
	for b.Loop() {
		buf = s.shake.appendShakeRsp(buf[:0], 1, 1)
		if len(buf) < shake.SealedSize {
			iss.RefillForBenchmark()
			buf = s.shake.appendShakeRsp(buf[:0], 1, 1)
		}
	}
}

func TestShakeOnLoopZeroAlloc(t *testing.T) {
	s, fc, _ := shakeLoopServer(t)
	c := fc.ctx.(*conn)
	if n := testing.AllocsPerRun(1000, func() { c.frames = 0; s.OnTraffic(fc) }); n != 0 {
		t.Fatalf("SHAKE on the loop allocates %v times", n)
	}
}

// BenchmarkShakeWire: SHAKE round trips over loopback TCP from parallel
// connections (client and gateway in one process, so it mixes both sides'
// CPU): shakes/s through the whole stack, most answered "no packet" once
// the slot's tickets are out.
func BenchmarkShakeWire(b *testing.B) {
	env := newShakeEnv(b, 1000)
	s := startServer(b, func(c *Config) { c.Shake = env.cfg; c.MaxFrameRate = 1 << 20 })
	var uid atomic.Uint64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := dialWire(b, s.Addr())
		u := uid.Add(1)
		w.auth(token(b, u, "d", time.Hour), "d")
		frame := codec.AppendFrame(nil, codec.CmdShake, 0, 1, nil)
		for pb.Next() {
			w.send(frame)
			w.expect(codec.CmdShakeRsp, 5*time.Second)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "shakes/s")
}
