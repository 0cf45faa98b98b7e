package gateway

import (
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
