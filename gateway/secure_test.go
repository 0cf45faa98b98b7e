package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/secure"
)

var testServerKey, testServerRing = func() (secure.ServerKey, *secure.KeyRing) {
	k, err := secure.GenerateKey(5, nil)
	if err != nil {
		panic(err)
	}
	old, _ := secure.GenerateKey(4, nil)
	r, err := secure.NewKeyRing([]secure.ServerKey{old, k}, 5)
	if err != nil {
		panic(err)
	}
	return k, r
}()

// swire is an encrypted raw-protocol test client.
type swire struct {
	*wire
	st    *secure.State
	hello []byte // the HELLO frame as sent (to replay it)
	raw   []byte // bytes received, not yet opened
	plain []byte // opened frames not yet returned
}

// helloFrame builds a HELLO frame carrying AUTH.
func helloFrame(t testing.TB, key secure.ServerKey, tok, device string) (*secure.ClientHandshake, []byte) {
	t.Helper()
	body, _ := proto.Marshal(&pb.Auth{Token: tok, Device: device})
	hs, hello, err := secure.Hello(secure.SuiteChaChaPoly, key.ID, key.Public[:], codec.AppendFrame(nil, codec.CmdAuth, 0, 0, body), nil)
	if err != nil {
		t.Fatal(err)
	}
	return hs, codec.AppendFrame(nil, codec.CmdHello, codec.FlagEncrypted, 0, hello)
}

// dialSecure handshakes; with confirm it also sends the first record (a
// HEARTBEAT) and reads its PONG, after which the session is admitted.
func dialSecure(t testing.TB, addr, tok, device string, confirm bool) (*swire, *pb.AuthOK) {
	t.Helper()
	w := &swire{wire: dialWire(t, addr)}
	hs, hello := helloFrame(t, testServerKey, tok, device)
	w.hello = hello
	w.send(hello)
	f := w.expect(codec.CmdHelloOK, 2*time.Second)
	payload, st, err := hs.Finish(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	w.st, w.raw, w.wire.rd = st, w.wire.rd, nil
	inner, _, err := codec.Split(payload, codec.MaxBodyLimit)
	if err != nil {
		t.Fatal(err)
	}
	if inner.Cmd != codec.CmdAuthOK {
		var e pb.Error
		_ = proto.Unmarshal(inner.Body, &e)
		t.Fatalf("HELLO_OK carries %v %v", inner.Cmd, &e)
	}
	var ok pb.AuthOK
	if err := proto.Unmarshal(inner.Body, &ok); err != nil {
		t.Fatal(err)
	}
	if confirm {
		w.sendSealed(codec.CmdHeartbeat, 1, nil)
		w.expectSealed(codec.CmdPong, 2*time.Second)
	}
	return w, &ok
}

func (w *swire) record(cmd codec.Cmd, seq uint16, m proto.Message) []byte {
	var body []byte
	if m != nil {
		body, _ = proto.Marshal(m)
	}
	return w.st.Seal(nil, codec.AppendFrame(nil, cmd, 0, seq, body))
}

func (w *swire) sendSealed(cmd codec.Cmd, seq uint16, m proto.Message) {
	w.t.Helper()
	w.send(w.record(cmd, seq, m))
}

func (w *swire) nextSealed(timeout time.Duration) (codec.Frame, error) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 4096)
	for {
		if f, n, err := codec.Split(w.plain, codec.MaxBodyLimit); err != nil {
			w.t.Fatalf("bad frame inside a record: %v", err)
		} else if n > 0 {
			f.Body = bytes.Clone(f.Body)
			w.plain = w.plain[n:]
			return f, nil
		}
		fr, n, err := w.st.Open(w.raw, codec.MaxBodyLimit)
		if err != nil {
			w.t.Fatalf("bad record from server: %v", err)
		}
		if n > 0 {
			w.plain = append(w.plain, fr...)
			w.raw = w.raw[n:]
			continue
		}
		_ = w.c.SetReadDeadline(deadline)
		m, err := w.c.Read(buf)
		if m > 0 {
			w.raw = append(w.raw, buf[:m]...)
			continue
		}
		return codec.Frame{}, err
	}
}

func (w *swire) expectSealed(cmd codec.Cmd, timeout time.Duration) codec.Frame {
	w.t.Helper()
	f, err := w.nextSealed(timeout)
	if err != nil {
		w.t.Fatalf("want sealed %v, got error %v", cmd, err)
	}
	if f.Cmd != cmd {
		w.t.Fatalf("want sealed %v, got %v (body %x)", cmd, f.Cmd, f.Body)
	}
	return f
}

// expectSealedClose wants a sealed ERROR with code, then EOF.
func (w *swire) expectSealedClose(code codec.Code, timeout time.Duration) {
	w.t.Helper()
	f := w.expectSealed(codec.CmdError, timeout)
	var e pb.Error
	_ = proto.Unmarshal(f.Body, &e)
	if codec.Code(e.Code) != code {
		w.t.Fatalf("want close code %d (%v), got %d (%s)", code, code, e.Code, e.Message)
	}
	if _, err := w.nextSealed(timeout); err != io.EOF {
		w.t.Fatalf("want EOF after ERROR, got %v", err)
	}
}

func (w *swire) call(seq uint16, method string, body []byte) *pb.Response {
	w.t.Helper()
	w.sendSealed(codec.CmdRequest, seq, &pb.Request{Method: method, Body: body})
	f := w.expectSealed(codec.CmdResponse, 5*time.Second)
	var r pb.Response
	if err := proto.Unmarshal(f.Body, &r); err != nil || f.Seq != seq {
		w.t.Fatalf("response seq %d (want %d): %v", f.Seq, seq, err)
	}
	return &r
}

// countingBackend counts calls that reach the handler.
func countingBackend() (backend.Backend, *atomic.Int64) {
	be := backend.NewEmbedded()
	var n atomic.Int64
	be.Handle("count", func(context.Context, *backend.Request) ([]byte, error) {
		n.Add(1)
		return []byte("counted"), nil
	})
	return be, &n
}

func secureServer(t *testing.T, mode string, mod func(*Config)) (*Server, *atomic.Int64) {
	be, n := countingBackend()
	s := startServer(t, func(c *Config) {
		c.Backend, c.ServerKeys, c.Encryption = be, testServerRing, mode
		if mod != nil {
			mod(c)
		}
	})
	return s, n
}

func TestSecureAndPlaintextSideBySide(t *testing.T) {
	s, n := secureServer(t, EncryptionOptional, func(c *Config) { c.DrainWindow = 100 * time.Millisecond })
	sw, ok := dialSecure(t, s.Addr(), token(t, 42, "phone", time.Hour), "", true)
	if ok.Uid != 42 || ok.Device != "phone" || ok.Heartbeat == nil {
		t.Fatalf("AUTH_OK in HELLO_OK = %v", ok)
	}
	pw := dialWire(t, s.Addr())
	pw.auth(token(t, 43, "pad", time.Hour), "")
	if r := sw.call(7, "echo", []byte("hello")); r.Code != 0 || string(r.Body) != "hello" {
		t.Fatalf("encrypted echo = %v", r)
	}
	if r := pw.call(7, "echo", []byte("hello")); r.Code != 0 || string(r.Body) != "hello" {
		t.Fatalf("plaintext echo = %v", r)
	}
	if r := sw.call(8, "count", nil); string(r.Body) != "counted" || n.Load() != 1 {
		t.Fatalf("count = %v, n = %d", r, n.Load())
	}
	// Heartbeat and PONG: each at most 32 bytes on the wire.
	hb := sw.record(codec.CmdHeartbeat, 999, nil)
	if len(hb) > 32 {
		t.Fatalf("encrypted heartbeat is %d bytes", len(hb))
	}
	sw.send(hb)
	if f := sw.expectSealed(codec.CmdPong, time.Second); f.Seq != 999 {
		t.Fatalf("pong seq %d", f.Seq)
	}
	if len(sw.raw) != 0 {
		t.Fatal("trailing bytes")
	}
	// Two frames in one record, and two records in one write.
	two := append(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 1, nil), codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 2, nil)...)
	sw.send(append(sw.st.Seal(nil, two), sw.record(codec.CmdHeartbeat, 3, nil)...))
	for seq := uint16(1); seq <= 3; seq++ {
		if f := sw.expectSealed(codec.CmdPong, time.Second); f.Seq != seq {
			t.Fatalf("pong %d, want %d", f.Seq, seq)
		}
	}
	if s.SessionUsers() != 2 {
		t.Fatalf("%d users", s.SessionUsers())
	}
	// GOAWAY to both on shutdown.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { _ = s.Shutdown(ctx) }()
	for _, f := range []codec.Frame{sw.expectSealed(codec.CmdGoAway, 3*time.Second), pw.expect(codec.CmdGoAway, 3*time.Second)} {
		var g pb.GoAway
		_ = proto.Unmarshal(f.Body, &g)
		if codec.Code(g.Code) != codec.CodeShutdown {
			t.Fatalf("goaway = %v", &g)
		}
	}
}

func TestSecureBadRecords(t *testing.T) {
	s, n := secureServer(t, EncryptionRequired, nil)
	tok := token(t, 9, "", time.Hour)
	dial := func() *swire { w, _ := dialSecure(t, s.Addr(), tok, "d", true); return w }
	req := func(w *swire) []byte {
		return w.record(codec.CmdRequest, 5, &pb.Request{Method: "count", Body: []byte("xyz")})
	}
	// A bit flipped in each part: length prefix, sealed header, sealed body, tag.
	for name, at := range map[string]func(rec []byte) int{
		"length": func([]byte) int { return 2 },
		"header": func([]byte) int { return secure.RecordHeader + 2 },
		"body":   func(rec []byte) int { return secure.RecordHeader + codec.HeaderSize + 3 },
		"tag":    func(rec []byte) int { return len(rec) - 1 },
	} {
		t.Run("flip_"+name, func(t *testing.T) {
			w := dial()
			rec := req(w)
			rec[at(rec)] ^= 0x01
			w.send(append(rec, make([]byte, 64)...)) // complete a lengthened record
			w.expectSealedClose(codec.CodeBadRecord, 2*time.Second)
		})
	}
	t.Run("replayed", func(t *testing.T) {
		w := dial()
		rec := req(w)
		w.send(rec)
		w.expectSealed(codec.CmdResponse, 2*time.Second)
		w.send(rec)
		w.expectSealedClose(codec.CodeBadRecord, 2*time.Second)
	})
	before := n.Load()
	t.Run("reordered", func(t *testing.T) {
		w := dial()
		r1, r2 := req(w), req(w)
		_ = r1
		w.send(r2)
		w.expectSealedClose(codec.CodeBadRecord, 2*time.Second)
	})
	t.Run("truncated", func(t *testing.T) {
		w := dial()
		r1, r2 := req(w), req(w)
		w.send(append(r1[:len(r1)-5], r2...))
		w.expectSealedClose(codec.CodeBadRecord, 2*time.Second)
	})
	t.Run("forged_record", func(t *testing.T) { // well-framed bytes not sealed with the key
		w := dial()
		w.send(bytes.Repeat([]byte{0, 0, 24}, 9))
		w.expectSealedClose(codec.CodeBadRecord, 2*time.Second)
	})
	if got := n.Load(); got != before {
		t.Fatalf("%d calls reached the handler from bad records", got-before)
	}
	if n.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1 (the genuine record of 'replayed')", n.Load())
	}
}

func TestSecureHandshakeRefusals(t *testing.T) {
	s, n := secureServer(t, EncryptionRequired, func(c *Config) { c.AuthTimeout = 300 * time.Millisecond })
	tok := token(t, 11, "", time.Hour)
	t.Run("plaintext_auth_refused", func(t *testing.T) {
		w := dialWire(t, s.Addr())
		w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: tok})
		w.expectClose(codec.CodeEncRequired, 2*time.Second)
	})
	t.Run("random_bytes", func(t *testing.T) {
		w := dialWire(t, s.Addr())
		w.send([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0, 0, 0})
		w.expectClose(codec.CodeProtocol, 2*time.Second)
	})
	t.Run("hello_never_finished", func(t *testing.T) {
		w := dialWire(t, s.Addr())
		_, hello := helloFrame(t, testServerKey, tok, "")
		w.send(hello[:20])
		w.expectClose(codec.CodeAuthTimeout, 2*time.Second)
	})
	t.Run("never_confirmed", func(t *testing.T) {
		w, _ := dialSecure(t, s.Addr(), tok, "", false)
		w.expectSealedClose(codec.CodeAuthTimeout, 2*time.Second)
	})
	t.Run("unknown_key_id", func(t *testing.T) {
		w := dialWire(t, s.Addr())
		k := testServerKey
		k.ID = 99
		_, hello := helloFrame(t, k, tok, "")
		w.send(hello)
		w.expectClose(codec.CodeUnknownKey, 2*time.Second)
	})
	t.Run("wrong_key", func(t *testing.T) { // a client pinning a key the server does not hold
		w := dialWire(t, s.Addr())
		k, _ := secure.GenerateKey(testServerKey.ID, nil)
		_, hello := helloFrame(t, k, tok, "")
		w.send(hello)
		w.expectClose(codec.CodeBadHandshake, 2*time.Second)
	})
	t.Run("tampered_hello", func(t *testing.T) {
		w := dialWire(t, s.Addr())
		_, hello := helloFrame(t, testServerKey, tok, "")
		hello[len(hello)-3] ^= 0x80
		w.send(hello)
		w.expectClose(codec.CodeBadHandshake, 2*time.Second)
	})
	t.Run("bad_token_inside", func(t *testing.T) {
		w := &swire{wire: dialWire(t, s.Addr())}
		hs, hello := helloFrame(t, testServerKey, "forged", "")
		w.send(hello)
		f := w.expect(codec.CmdHelloOK, 2*time.Second)
		payload, st, err := hs.Finish(f.Body)
		if err != nil {
			t.Fatal(err)
		}
		w.st = st
		inner, _, _ := codec.Split(payload, codec.MaxBodyLimit)
		var e pb.Error
		_ = proto.Unmarshal(inner.Body, &e)
		if inner.Cmd != codec.CmdError || codec.Code(e.Code) != codec.CodeBadToken {
			t.Fatalf("HELLO_OK carries %v %v", inner.Cmd, &e)
		}
		if _, err := w.next(time.Second); !errors.Is(err, io.EOF) {
			t.Fatalf("not closed: %v", err)
		}
	})
	t.Run("frame_inside_first_flight_not_auth", func(t *testing.T) {
		w := dialWire(t, s.Addr())
		hs, hello, _ := secure.Hello(secure.SuiteChaChaPoly, testServerKey.ID, testServerKey.Public[:],
			codec.AppendFrame(nil, codec.CmdRequest, 0, 1, []byte{0x0a, 0x05, 'c', 'o', 'u', 'n', 't'}), nil)
		w.send(codec.AppendFrame(nil, codec.CmdHello, codec.FlagEncrypted, 0, hello))
		f := w.expect(codec.CmdHelloOK, 2*time.Second)
		payload, _, err := hs.Finish(f.Body)
		if err != nil {
			t.Fatal(err)
		}
		inner, _, _ := codec.Split(payload, codec.MaxBodyLimit)
		var e pb.Error
		_ = proto.Unmarshal(inner.Body, &e)
		if codec.Code(e.Code) != codec.CodeNotAuthed {
			t.Fatalf("got %v %v", inner.Cmd, &e)
		}
	})
	if n.Load() != 0 {
		t.Fatalf("%d calls reached the handler", n.Load())
	}
}

// A replayed first flight gets a HELLO_OK it cannot read: it must not
// replace the real session, count as a reconnect, or reach the handler.
func TestSecureReplayedFirstFlight(t *testing.T) {
	s, n := secureServer(t, EncryptionRequired, func(c *Config) {
		c.AuthTimeout = 300 * time.Millisecond
		c.ConnAdmission.FlapMax, c.ConnAdmission.FlapWindow = 2, time.Minute
	})
	real, _ := dialSecure(t, s.Addr(), token(t, 21, "", time.Hour), "phone", true)
	for i := range 5 { // more than FlapMax: replays must not count as reconnects
		rw := dialWire(t, s.Addr())
		rw.send(real.hello)
		rw.expect(codec.CmdHelloOK, 2*time.Second)
		if i%2 == 1 {
			rw.send(bytes.Repeat([]byte{0}, 3)) // junk after it: closed (3010, sealed), never admitted
		} // else: nothing more, closed at the AUTH deadline
		_ = rw.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadAll(rw.c); err != nil {
			t.Fatalf("replayed connection not closed: %v", err)
		}
	}
	if r := real.call(3, "count", nil); string(r.Body) != "counted" {
		t.Fatalf("real session broken after replays: %v", r)
	}
	if n.Load() != 1 || s.SessionUsers() != 1 {
		t.Fatalf("handler %d, users %d", n.Load(), s.SessionUsers())
	}
	// The real client can still reconnect (no flap ban from the replays).
	again, _ := dialSecure(t, s.Addr(), token(t, 21, "", time.Hour), "pad", true)
	if r := again.call(1, "echo", []byte("x")); string(r.Body) != "x" {
		t.Fatalf("reconnect after replays: %v", r)
	}
}

func TestSecureHandshakeOnLoopAndShed(t *testing.T) {
	t.Run("on_loop", func(t *testing.T) {
		s, _ := secureServer(t, EncryptionRequired, func(c *Config) { c.HandshakeWorkers = -1 })
		w, _ := dialSecure(t, s.Addr(), token(t, 1, "", time.Hour), "", true)
		if r := w.call(1, "echo", []byte("x")); string(r.Body) != "x" {
			t.Fatalf("echo %v", r)
		}
	})
	t.Run("queue_full", func(t *testing.T) {
		be, _ := countingBackend()
		s, err := New(Config{Listen: "127.0.0.1:0", Keys: testKeys, Loops: 1, Backend: be,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ServerKeys: testServerRing,
			Encryption: EncryptionRequired, HandshakeQueue: 1})
		if err != nil {
			t.Fatal(err)
		}
		s.sec.poolOnce.Do(func() {}) // no workers: the queue stays full
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		tok := token(t, 2, "", time.Hour)
		first := dialWire(t, s.Addr())
		_, hello := helloFrame(t, testServerKey, tok, "")
		first.send(hello)
		checkFor(t, 2*time.Second, func() error {
			if len(s.sec.jobs) != 1 {
				return errorf("queued %d", len(s.sec.jobs))
			}
			return nil
		})
		second := dialWire(t, s.Addr())
		second.send(hello)
		second.expectClose(codec.CodeServerBusy, 2*time.Second)
	})
}

// The handshake workers start with the server and fill the ephemeral key
// store from idle time, before the first HELLO; a handshake then takes one
// key from it (two X25519 left on the hot path: BenchmarkServerHandshake*;
// secure's TestPregenerated checks each key is used once).
func TestHandshakeWorkersPregenerate(t *testing.T) {
	s, _ := secureServer(t, EncryptionRequired, nil)
	checkFor(t, 5*time.Second, func() error {
		if n := secure.Pregenerated(); n != secure.EphemeralTarget() {
			return errorf("store holds %d of %d", n, secure.EphemeralTarget())
		}
		return nil
	})
	w, _ := dialSecure(t, s.Addr(), token(t, 1, "", time.Hour), "", true)
	if r := w.call(1, "echo", []byte("x")); string(r.Body) != "x" {
		t.Fatalf("echo %v", r)
	}
}

// TestEphemeralStoreShare: Config.EphemeralStore (a worker process's share)
// bounds the pre-generated keys: the workers stop at it, not at 1,024.
func TestEphemeralStoreShare(t *testing.T) {
	defer secure.SetEphemeralStore(secure.EphemeralStore)
	s, _ := secureServer(t, EncryptionRequired, func(c *Config) { c.EphemeralStore = 64 })
	if secure.EphemeralTarget() != 64 {
		t.Fatalf("target %d, want 64", secure.EphemeralTarget())
	}
	_, hello := helloFrame(t, testServerKey, "x", "")
	for i := 0; secure.Pregenerated() > 32 && i < 2*secure.EphemeralStore; i++ { // drain what earlier tests left, then let the workers refill
		if sh, _, err := testServerRing.Accept(hello[codec.HeaderSize:], nil); err == nil {
			_, _, _ = sh.Finish(nil, nil)
		}
	}
	dialSecure(t, s.Addr(), token(t, 1, "", time.Hour), "", true) // a job wakes a worker: it refills after it
	checkFor(t, 5*time.Second, func() error {
		if n := secure.Pregenerated(); n != 64 {
			return errorf("store holds %d, want 64", n)
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond)
	if n := secure.Pregenerated(); n != 64 {
		t.Fatalf("store grew to %d past its share", n)
	}
}

// Per-connection cost of encryption: the 8-byte sec pointer keeps conn in
// its 144-byte size class (136 bytes before), and an encrypted connection
// adds one secure.State object (80-byte class): +80 B, goal <= 128 B.
func TestEncryptedConnBytes(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 144 {
		t.Fatalf("conn is %d bytes: over the 144-byte size class", n)
	}
	if n := unsafe.Sizeof(secure.State{}); n > 80 {
		t.Fatalf("secure.State is %d bytes: over the 80-byte size class", n)
	}
}

// Key rotation without a restart: POST /keys/reload (admin token) swaps the
// ring; clients pinning the new key connect, the old key keeps working
// while it stays in the file.
func TestServerKeysReloadByAdmin(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/server-keys.json"
	old, _ := secure.GenerateKey(1, nil)
	if err := secure.SaveKeys(file, []secure.ServerKey{old}, 1); err != nil {
		t.Fatal(err)
	}
	ring, _ := secure.LoadKeyRing(file)
	s := startServer(t, func(c *Config) {
		c.ServerKeys, c.ServerKeysFile, c.Encryption, c.AdminToken = ring, file, EncryptionRequired, "sekrit"
	})
	admin, err := s.ServeAdmin("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	post := func(tok string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/keys/reload", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	hello := func(k secure.ServerKey) codec.Frame {
		w := dialWire(t, s.Addr())
		_, h := helloFrame(t, k, token(t, 3, "", time.Hour), "")
		w.send(h)
		f, err := w.next(2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	nk, _ := secure.GenerateKey(2, nil)
	if f := hello(nk); f.Cmd != codec.CmdError {
		t.Fatalf("new key accepted before the reload: %v", f.Cmd)
	}
	if err := secure.SaveKeys(file, []secure.ServerKey{old, nk}, 2); err != nil {
		t.Fatal(err)
	}
	if code := post(""); code != http.StatusUnauthorized {
		t.Fatalf("reload without the admin token: %d", code)
	}
	if code := post("sekrit"); code != http.StatusOK {
		t.Fatalf("reload: %d", code)
	}
	for _, k := range []secure.ServerKey{nk, old} {
		if f := hello(k); f.Cmd != codec.CmdHelloOK {
			t.Fatalf("key %d after the reload: %v", k.ID, f.Cmd)
		}
	}
}

// Over WebSocket: HELLO and HELLO_OK in binary messages, then one record
// per message; a tampered record closes with 3010.
func TestSecureOverWebSocket(t *testing.T) {
	s, n := secureServer(t, EncryptionRequired, nil)
	w := dialWS(t, s.Addr())
	hs, hello := helloFrame(t, testServerKey, token(t, 8, "", time.Hour), "web")
	w.sendRaw(ws.MaskFrame(ws.NewBinaryFrame(hello)))
	f := w.expect(codec.CmdHelloOK)
	payload, st, err := hs.Finish(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	if inner, _, _ := codec.Split(payload, codec.MaxBodyLimit); inner.Cmd != codec.CmdAuthOK {
		t.Fatalf("HELLO_OK carries %v", inner.Cmd)
	}
	sealed := func(cmd codec.Cmd, seq uint16, m proto.Message) []byte {
		var body []byte
		if m != nil {
			body, _ = proto.Marshal(m)
		}
		return st.Seal(nil, codec.AppendFrame(nil, cmd, 0, seq, body))
	}
	open := func() codec.Frame {
		m := w.read()
		fr, k, err := st.Open(m.Payload, codec.MaxBodyLimit)
		if err != nil || k != len(m.Payload) {
			t.Fatalf("record: %v (%d of %d bytes)", err, k, len(m.Payload))
		}
		inner, _, _ := codec.Split(fr, codec.MaxBodyLimit)
		inner.Body = bytes.Clone(inner.Body)
		return inner
	}
	w.sendRaw(ws.MaskFrame(ws.NewBinaryFrame(sealed(codec.CmdHeartbeat, 5, nil))))
	if f := open(); f.Cmd != codec.CmdPong || f.Seq != 5 {
		t.Fatalf("got %v seq %d", f.Cmd, f.Seq)
	}
	w.sendRaw(ws.MaskFrame(ws.NewBinaryFrame(sealed(codec.CmdRequest, 6, &pb.Request{Method: "count"}))))
	if f := open(); f.Cmd != codec.CmdResponse || f.Seq != 6 {
		t.Fatalf("got %v seq %d", f.Cmd, f.Seq)
	}
	// A frame of the largest body fits in one message with its record's
	// overhead (the message cap is max body + header + record overhead).
	big := &pb.Request{Method: "count"}
	for k := s.cfg.MaxBody; proto.Size(big) != s.cfg.MaxBody && k > 0; k-- {
		big.Body = make([]byte, k)
	}
	if proto.Size(big) != s.cfg.MaxBody {
		t.Fatalf("could not size a request to %d bytes", s.cfg.MaxBody)
	}
	w.sendRaw(ws.MaskFrame(ws.NewBinaryFrame(sealed(codec.CmdRequest, 8, big))))
	if f := open(); f.Cmd != codec.CmdResponse || f.Seq != 8 {
		t.Fatalf("max-body request over WebSocket: got %v seq %d", f.Cmd, f.Seq)
	}
	bad := sealed(codec.CmdRequest, 7, &pb.Request{Method: "count"})
	bad[len(bad)-1] ^= 1
	w.sendRaw(ws.MaskFrame(ws.NewBinaryFrame(bad)))
	if f := open(); f.Cmd != codec.CmdError {
		t.Fatalf("got %v after a tampered record", f.Cmd)
	} else {
		var e pb.Error
		_ = proto.Unmarshal(f.Body, &e)
		if codec.Code(e.Code) != codec.CodeBadRecord {
			t.Fatalf("code %d", e.Code)
		}
	}
	if n.Load() != 2 {
		t.Fatalf("handler ran %d times, want 2", n.Load())
	}
}

// Token keys reload without a restart (SIGHUP in longlink gateway).
func TestTokenKeysReload(t *testing.T) {
	s := startServer(t, nil)
	nk, err := auth.NewKeySet(2, map[uint32][]byte{2: []byte("another-token-key-0123456789abcd")})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := nk.Mint(5, "", time.Now().Add(time.Hour))
	w := dialWire(t, s.Addr())
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: tok})
	w.expectClose(codec.CodeBadToken, 2*time.Second)
	if err := s.ReloadTokenKeys(nk); err != nil {
		t.Fatal(err)
	}
	dialWire(t, s.Addr()).auth(tok, "d")
	w = dialWire(t, s.Addr())
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 6, "", time.Hour)}) // signed by the old key
	w.expectClose(codec.CodeBadToken, 2*time.Second)
}

// An encrypted client that half-closes with calls in flight still gets
// their answers, sealed in order like every other record (closing.go's
// orphaned socket seals too).
func TestSecureHalfCloseGetsSealedAnswers(t *testing.T) {
	be := slowEcho()
	s := startServer(t, func(c *Config) { c.Backend, c.ServerKeys, c.Encryption = be, testServerRing, "required" })
	w, _ := dialSecure(t, s.Addr(), token(t, 9, "", time.Hour), "d", true)
	var b []byte
	for seq := uint16(2); seq <= 4; seq++ {
		method := "slow"
		b = append(b, w.st.Seal(nil, codec.AppendFrame(nil, codec.CmdRequest, 0, seq, rawRequest([]byte(method), []byte{byte(seq)})))...)
	}
	w.send(b)
	if err := w.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got := map[uint16]bool{}
	for len(got) < 3 {
		f, err := w.nextSealed(3 * time.Second)
		if err != nil {
			t.Fatalf("answers %v, then %v", got, err)
		}
		if f.Cmd == codec.CmdResponse {
			got[f.Seq] = true
		}
	}
}
