package secure

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/longlink/longlink/codec"
)

// fixedRand yields a fixed byte sequence: fixed ephemeral keys for tests
// and the documented test vectors.
type fixedRand struct{ b byte }

func (r *fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.b
		r.b++
	}
	return len(p), nil
}

func testRing(t testing.TB) (*KeyRing, ServerKey) {
	t.Helper()
	k, err := GenerateKey(7, &fixedRand{b: 0x40})
	if err != nil {
		t.Fatal(err)
	}
	old, _ := GenerateKey(3, &fixedRand{b: 0x90})
	r, err := NewKeyRing([]ServerKey{old, k}, 7)
	if err != nil {
		t.Fatal(err)
	}
	return r, k
}

// pair runs a whole handshake and returns the client's and server's states.
func pair(t testing.TB, suite uint8) (cli, srv *State) {
	t.Helper()
	r, k := testRing(t)
	auth := codec.AppendFrame(nil, codec.CmdAuth, 0, 0, []byte("token"))
	ch, hello, err := Hello(suite, k.ID, k.Public[:], auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	sh, payload, err := r.Accept(hello, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(payload, auth) {
		t.Fatalf("server got first flight %x, want %x", payload, auth)
	}
	authOK := codec.AppendFrame(nil, codec.CmdAuthOK, 0, 0, []byte("ok"))
	helloOK, srv, err := sh.Finish(nil, authOK)
	if err != nil {
		t.Fatal(err)
	}
	got, cli, err := ch.Finish(helloOK)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, authOK) {
		t.Fatalf("client got %x, want %x", got, authOK)
	}
	return cli, srv
}

func TestHandshakeAndRecords(t *testing.T) {
	for _, suite := range []uint8{SuiteChaChaPoly, SuiteAESGCM} {
		t.Run(SuiteName(suite), func(t *testing.T) {
			cli, srv := pair(t, suite)
			for i := range 3 {
				hb := codec.HeaderOnly(codec.CmdHeartbeat, uint16(i))
				rec := cli.Seal(nil, hb[:])
				if len(rec) > 32 {
					t.Fatalf("heartbeat record is %d bytes, want <= 32", len(rec))
				}
				fr, n, err := srv.Open(rec, 1<<16)
				if err != nil || n != len(rec) || !bytes.Equal(fr, hb[:]) {
					t.Fatalf("open: %x %d %v", fr, n, err)
				}
				pong := codec.HeaderOnly(codec.CmdPong, uint16(i))
				rec = srv.Seal(nil, pong[:])
				if fr, _, err := cli.Open(rec, 1<<16); err != nil || !bytes.Equal(fr, pong[:]) {
					t.Fatalf("client open: %v", err)
				}
			}
		})
	}
}

func TestBadRecords(t *testing.T) {
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 9)
	mk := func() (*State, *State, [][]byte) {
		cli, srv := pair(t, SuiteChaChaPoly)
		var recs [][]byte
		for range 3 {
			recs = append(recs, cli.Seal(nil, hb[:]))
		}
		return cli, srv, recs
	}
	// A bit flipped in every byte: length prefix, sealed header, sealed body, tag.
	_, _, recs := mk()
	for i := range recs[0] {
		for bit := range 8 {
			_, srv, recs := mk()
			rec := bytes.Clone(recs[0])
			rec[i] ^= 1 << bit
			fr, n, err := srv.Open(rec, 1<<16)
			if err == nil && n > 0 {
				t.Fatalf("byte %d bit %d flipped: opened %x", i, bit, fr)
			}
			if n == 0 && err == nil && i >= RecordHeader {
				t.Fatalf("byte %d: wants more bytes", i)
			}
			if srv.recvN != 0 {
				t.Fatal("a failed record moved the counter")
			}
		}
	}
	// Reordered: the second record first.
	_, srv, recs := mk()
	if _, _, err := srv.Open(bytes.Clone(recs[1]), 1<<16); !errors.Is(err, ErrRecord) {
		t.Fatalf("reordered: %v", err)
	}
	// Replayed: the first record twice.
	_, srv, recs = mk()
	first := bytes.Clone(recs[0])
	if _, _, err := srv.Open(recs[0], 1<<16); err != nil {
		t.Fatal(err)
	}
	if _, _, err := srv.Open(first, 1<<16); !errors.Is(err, ErrRecord) {
		t.Fatalf("replayed: %v", err)
	}
	// Truncated: every prefix waits, a prefix completed with the next
	// record's bytes fails.
	_, srv, recs = mk()
	for i := range len(recs[0]) {
		if _, n, err := srv.Open(recs[0][:i], 1<<16); n != 0 || err != nil {
			t.Fatalf("prefix %d: n=%d err=%v", i, n, err)
		}
	}
	cut := append(bytes.Clone(recs[0][:len(recs[0])-4]), recs[1][:4]...)
	if _, _, err := srv.Open(cut, 1<<16); !errors.Is(err, ErrRecord) {
		t.Fatalf("truncated and completed: %v", err)
	}
	// Too large, and shorter than a tag.
	if _, _, err := srv.Open([]byte{0xff, 0xff, 0xff}, 1<<16); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	if _, _, err := srv.Open([]byte{0, 0, 15}, 1<<16); !errors.Is(err, ErrRecord) {
		t.Fatalf("short: %v", err)
	}
	// The wrong direction's key (a server record reflected back).
	cli, srv, _ := mk()
	refl := srv.Seal(nil, hb[:])
	if _, _, err := srv.Open(refl, 1<<16); !errors.Is(err, ErrRecord) {
		t.Fatalf("reflected: %v", err)
	}
	_ = cli
}

func TestCounterLimit(t *testing.T) {
	for _, suite := range []uint8{SuiteAESGCM, SuiteChaChaPoly} {
		cli, srv := pair(t, suite)
		if cli.Exhausted() || srv.Exhausted() || cli.Suite() != suite || srv.Suite() != suite {
			t.Fatal("fresh state exhausted, or the wrong suite")
		}
		cli.sendN = recordLimit[suite] - 1
		srv.recvN = cli.sendN
		hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
		if _, _, err := srv.Open(cli.Seal(nil, hb[:]), 1<<16); err != nil {
			t.Fatal(err)
		}
		if !cli.Exhausted() || !srv.Exhausted() {
			t.Fatal("not exhausted at the limit")
		}
		// The counters have room past the limit for the last records.
		if n := uint64(recordLimit[suite]) * 2; n > uint64(^uint32(0))+1 {
			t.Fatalf("%s: limit %d leaves the 32-bit counters no margin", SuiteName(suite), recordLimit[suite])
		}
	}
}

func TestForgedServerKey(t *testing.T) {
	r, k := testRing(t)
	// A man in the middle with its own key under the pinned id.
	forged, _ := GenerateKey(k.ID, &fixedRand{b: 0x11})
	fr, _ := NewKeyRing([]ServerKey{forged}, k.ID)
	auth := codec.AppendFrame(nil, codec.CmdAuth, 0, 0, []byte("t"))
	ch, hello, _ := Hello(SuiteChaChaPoly, k.ID, k.Public[:], auth, nil)
	if _, _, err := fr.Accept(hello, nil); !errors.Is(err, ErrHandshake) {
		t.Fatalf("forged server read the first flight: %v", err)
	}
	// Even answering with a message 2 of its own: the client refuses it.
	_, hello2, _ := Hello(SuiteChaChaPoly, k.ID, forged.Public[:], auth, nil)
	sh, _, err := fr.Accept(hello2, nil)
	if err != nil {
		t.Fatal(err)
	}
	msg2, _, _ := sh.Finish(nil, []byte("AUTH_OK"))
	if _, _, err := ch.Finish(msg2); !errors.Is(err, ErrForgedKey) {
		t.Fatalf("client accepted a forged server: %v", err)
	}
	// Unknown key id, unknown suite, a changed key id on the path.
	if _, _, err := r.Accept(append([]byte{1, 1, 0, 0, 0, 99}, hello[6:]...), nil); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key id: %v", err)
	}
	if _, _, err := r.Accept(append([]byte{1, 9}, hello[2:]...), nil); !errors.Is(err, ErrBadSuite) {
		t.Fatalf("bad suite: %v", err)
	}
	_, hello3, _ := Hello(SuiteChaChaPoly, k.ID, k.Public[:], auth, nil)
	hello3[1] = SuiteAESGCM // downgrade/upgrade on the path: prologue mismatch
	if _, _, err := r.Accept(hello3, nil); !errors.Is(err, ErrHandshake) {
		t.Fatalf("suite changed on the path: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "server.keys")
	a, _ := GenerateKey(1, nil)
	b, _ := GenerateKey(2, nil)
	if err := SaveKeys(p, []ServerKey{a, b}, 2); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	r, err := LoadKeyRing(p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Active() != (PinnedKey{2, b.Public}) || len(r.IDs()) != 2 {
		t.Fatalf("active %v ids %v", r.Active(), r.IDs())
	}
	pin, err := ParsePin(r.Pins()[0])
	if err != nil || pin.Public != b.Public {
		t.Fatalf("pin %v %v", pin, err)
	}
	_ = os.Chmod(p, 0o644)
	if _, err := LoadKeyRing(p); err == nil {
		t.Fatal("loaded a world-readable key file")
	}
	if _, err := NewKeyRing([]ServerKey{a}, 5); err == nil {
		t.Fatal("active id not in the ring accepted")
	}
	for _, bad := range []string{"", "1", "x:00", "1:abc", "1:" + string(bytes.Repeat([]byte("0"), 62))} {
		if _, err := ParsePin(bad); err == nil {
			t.Fatalf("pin %q accepted", bad)
		}
	}
}

func TestChaChaRekeyable(t *testing.T) {
	if !chachaRekeyable {
		t.Fatal("the allocation-free ChaCha20-Poly1305 path is off: x/crypto's layout changed; see record.go")
	}
}

func BenchmarkSealOpenHeartbeat(b *testing.B) {
	for _, suite := range []uint8{SuiteChaChaPoly, SuiteAESGCM} {
		b.Run(SuiteName(suite), func(b *testing.B) {
			cli, srv := pair(b, suite)
			hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
			buf := make([]byte, 0, 64)
			b.ReportAllocs()
			for b.Loop() {
				rec := cli.Seal(buf[:0], hb[:])
				if _, _, err := srv.Open(rec, 1<<16); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The alternatives measured for ChaCha20-Poly1305 without a stored AEAD.
func BenchmarkChaChaNewPerRecord(b *testing.B) {
	var k [32]byte
	nc := make([]byte, 12)
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		a, _ := chacha20poly1305.New(k[:])
		_ = a.Seal(buf[:0], nc, hb[:], nil)
	}
}

func BenchmarkChaChaPooledRekey(b *testing.B) {
	var k [32]byte
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		st := State{}
		sc, a := st.get(1, &k)
		_ = a.Seal(buf[:0], sc.nonce[:], hb[:], nil)
		put(sc)
	}
}

// BenchmarkServerHandshake: Accept + Finish with the ephemeral made inline
// (2 ladders and a fixed-base multiplication; the store drained), the cost
// in a storm that outlasts the
// store. BenchmarkServerHandshakePregenerated is the one from the store.
func BenchmarkServerHandshake(b *testing.B) {
	for Pregenerated() > 0 {
		_, _ = takeEphemeral()
	}
	r, k := testRing(b)
	auth := codec.AppendFrame(nil, codec.CmdAuth, 0, 0, make([]byte, 120))
	_, hello, _ := Hello(SuiteChaChaPoly, k.ID, k.Public[:], auth, nil)
	authOK := make([]byte, 60)
	b.ReportAllocs()
	for b.Loop() {
		sh, _, err := r.Accept(hello, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := sh.Finish(nil, authOK); err != nil {
			b.Fatal(err)
		}
	}
}
