package gateway

import (
	"errors"
	"testing"

	"github.com/panjf2000/gnet/v2"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/secure"
)

// encryptedLoopConn is an authenticated encrypted connection on a fakeConn,
// with n sealed HEARTBEAT records ready to feed to OnTraffic.
func encryptedLoopConn(tb testing.TB, n int) (*Server, *fakeConn, [][]byte) {
	s, err := New(Config{Keys: testKeys, MaxFrameRate: 1 << 15, ServerKeys: testServerRing})
	if err != nil {
		tb.Fatal(err)
	}
	auth := codec.AppendFrame(nil, codec.CmdAuth, 0, 0, nil)
	ch, hello, _ := secure.Hello(secure.SuiteChaChaPoly, testServerKey.ID, testServerKey.Public[:], auth, nil)
	sh, _, err := testServerRing.Accept(hello, nil)
	if err != nil {
		tb.Fatal(err)
	}
	helloOK, srv, _ := sh.Finish(nil, auth)
	_, cli, err := ch.Finish(helloOK)
	if err != nil {
		tb.Fatal(err)
	}
	fc := &fakeConn{}
	c := &conn{gc: fc, uid: 1, device: "d"}
	c.sec.Store(srv)
	c.state.Store(stateAuthed)
	fc.ctx = c
	s.wheel.Add(&c.hb, c, s.idleTicks(c.network), 1<<31)
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
	recs := make([][]byte, n)
	for i := range recs {
		recs[i] = cli.Seal(nil, hb[:])
	}
	return s, fc, recs
}

// BenchmarkEncryptedHeartbeatOnLoop: BenchmarkHeartbeatOnLoop with the
// record opened in place and the PONG sealed (27 bytes each way).
func BenchmarkEncryptedHeartbeatOnLoop(b *testing.B) {
	s, fc, recs := encryptedLoopConn(b, b.N)
	c := fc.ctx.(*conn)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.frames = 0
		fc.in = recs[i]
		if s.OnTraffic(fc) != gnet.None {
			b.Fatal("closed")
		}
	}
	if fc.written != b.N*(codec.HeaderSize+secure.Overhead) {
		b.Fatalf("wrote %d bytes for %d heartbeats", fc.written, b.N)
	}
}

func TestEncryptedHeartbeatOnLoopZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	s, fc, recs := encryptedLoopConn(t, 1100)
	c := fc.ctx.(*conn)
	i := 0
	if n := testing.AllocsPerRun(1000, func() { c.frames = 0; fc.in = recs[i]; i++; s.OnTraffic(fc) }); n != 0 {
		t.Fatalf("encrypted heartbeat on the loop allocates %v times", n)
	}
	if fc.written != i*(codec.HeaderSize+secure.Overhead) {
		t.Fatalf("wrote %d bytes for %d heartbeats: not all answered", fc.written, i)
	}
}

// resetConn is a connection the client reset: gnet's Write fails and closes
// it (OnClose runs, the context is cleared) before returning.
type resetConn struct{ fakeConn }

func (r *resetConn) Write([]byte) (int, error) {
	r.ctx = nil
	return 0, errors.New("connection reset by peer")
}

// A pool handshake whose HELLO_OK write finds the connection reset must stop
// there: the million-connection run crashed workers in OnTraffic on the
// cleared context (interface conversion panic) before finishHello checked.
func TestFinishHelloOnResetConnection(t *testing.T) {
	s, err := New(Config{Keys: testKeys, ServerKeys: testServerRing})
	if err != nil {
		t.Fatal(err)
	}
	for _, code := range []codec.Code{codec.OK, codec.CodeBadToken} {
		rc := &resetConn{}
		c := &conn{gc: rc, inHello: true}
		rc.ctx = c
		_, srv := secureTestStates(t)
		if err := s.finishHello(rc, c, hsResult{out: []byte("HELLO_OK"), st: srv, code: code, uid: 1, device: "d"}); err != nil {
			t.Fatalf("code %v: %v", code, err)
		}
		if c.inHello {
			t.Fatal("inHello left set")
		}
	}
}

func secureTestStates(tb testing.TB) (cli, srv *secure.State) {
	auth := codec.AppendFrame(nil, codec.CmdAuth, 0, 0, nil)
	ch, hello, _ := secure.Hello(secure.SuiteChaChaPoly, testServerKey.ID, testServerKey.Public[:], auth, nil)
	sh, _, err := testServerRing.Accept(hello, nil)
	if err != nil {
		tb.Fatal(err)
	}
	helloOK, srv, _ := sh.Finish(nil, auth)
	_, cli, err = ch.Finish(helloOK)
	if err != nil {
		tb.Fatal(err)
	}
	return cli, srv
}
