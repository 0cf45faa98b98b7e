package secure

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"strconv"
	"testing"

	"github.com/flynn/noise"
)

var flynnSuites = [3]noise.CipherSuite{
	SuiteChaChaPoly: noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashSHA256),
	SuiteAESGCM:     noise.NewCipherSuite(noise.DH25519, noise.CipherAESGCM, noise.HashSHA256),
}

func flynnState(t *testing.T, suite uint8, initiator bool, prefix []byte, k ServerKey, seed byte) *noise.HandshakeState {
	t.Helper()
	cfg := noise.Config{CipherSuite: flynnSuites[suite], Random: &fixedRand{b: seed}, Pattern: noise.HandshakeNK,
		Initiator: initiator, Prologue: helloPrologue(prefix)}
	if initiator {
		cfg.PeerStatic = k.Public[:]
	} else {
		cfg.StaticKeypair = noise.DHKey{Private: k.Private[:], Public: k.Public[:]}
	}
	hs, err := noise.NewHandshakeState(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// TestCrossFlynn keeps the handshake byte-for-byte Noise NK: each side of
// this package against github.com/flynn/noise (the reference it replaced),
// with random server keys and payloads of several sizes, both suites. With
// the same ephemeral keys the messages must be identical bytes, and the
// transport keys must agree.
func TestCrossFlynn(t *testing.T) {
	for _, suite := range []uint8{SuiteChaChaPoly, SuiteAESGCM} {
		for i, size := range []int{0, 1, 31, 200, 4000} {
			k, err := GenerateKey(uint32(i+1), nil)
			if err != nil {
				t.Fatal(err)
			}
			ring, _ := NewKeyRing([]ServerKey{k}, k.ID)
			p1, p2 := make([]byte, size), make([]byte, size/2+1)
			_, _ = rand.Read(p1)
			_, _ = rand.Read(p2)
			prefix := []byte{HelloVersion, suite, 0, 0, 0, 0}
			binary.BigEndian.PutUint32(prefix[2:], k.ID)
			seedC, seedS := byte(i*37), byte(i*37+100)

			// Our client, flynn's server; every other case with the
			// handshake prepared ahead (Prepare), its message 1 written later.
			ch, hello, err := Hello(suite, k.ID, k.Public[:], p1, &fixedRand{b: seedC})
			if i%2 == 1 {
				ch, err = Prepare(suite, k.ID, k.Public[:], &fixedRand{b: seedC})
				if err == nil {
					hello, err = ch.Hello(p1)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			fc := flynnState(t, suite, true, prefix, k, seedC)
			want, _, _, err := fc.WriteMessage(append([]byte{}, prefix...), p1)
			if err != nil || !bytes.Equal(hello, want) {
				t.Fatalf("%s size %d: HELLO differs from flynn/noise's\n got %x\nwant %x", SuiteName(suite), size, hello, want)
			}
			fs := flynnState(t, suite, false, prefix, k, seedS)
			got, _, _, err := fs.ReadMessage(nil, hello[HelloPrefix:])
			if err != nil || !bytes.Equal(got, p1) {
				t.Fatalf("%s size %d: flynn cannot read our HELLO: %v", SuiteName(suite), size, err)
			}
			msg2, cs1, cs2, err := fs.WriteMessage(nil, p2)
			if err != nil {
				t.Fatal(err)
			}
			got, cli, err := ch.Finish(msg2)
			if err != nil || !bytes.Equal(got, p2) {
				t.Fatalf("%s size %d: our client cannot read flynn's HELLO_OK: %v", SuiteName(suite), size, err)
			}
			// Our server, flynn's client (the same HELLO).
			sh, got, err := ring.Accept(hello, &fixedRand{b: seedS})
			if err != nil || !bytes.Equal(got, p1) {
				t.Fatalf("%s size %d: accept: %v", SuiteName(suite), size, err)
			}
			ours, srv, err := sh.Finish(nil, p2)
			if err != nil || !bytes.Equal(ours, msg2) {
				t.Fatalf("%s size %d: HELLO_OK differs from flynn/noise's\n got %x\nwant %x", SuiteName(suite), size, ours, msg2)
			}
			got, fcs1, fcs2, err := fc.ReadMessage(nil, ours)
			if err != nil || !bytes.Equal(got, p2) {
				t.Fatalf("%s size %d: flynn cannot read our HELLO_OK: %v", SuiteName(suite), size, err)
			}
			if fcs1.UnsafeKey() != cs1.UnsafeKey() || fcs2.UnsafeKey() != cs2.UnsafeKey() {
				t.Fatal("flynn's two sides disagree")
			}
			// Transport: records sealed with flynn's keys open on ours and back.
			frame := []byte("frame across implementations")
			rec := cli.Seal(nil, frame)
			ct, err := cs1.Encrypt(nil, rec[:RecordHeader], frame)
			if err != nil || !bytes.Equal(rec[RecordHeader:], ct) {
				t.Fatalf("%s: client record differs from flynn's c1 encryption", SuiteName(suite))
			}
			if f, _, err := srv.Open(rec, 1<<16); err != nil || !bytes.Equal(f, frame) {
				t.Fatalf("%s: server cannot open: %v", SuiteName(suite), err)
			}
			rec = srv.Seal(nil, frame)
			ct, err = cs2.Encrypt(nil, rec[:RecordHeader], frame)
			if err != nil || !bytes.Equal(rec[RecordHeader:], ct) {
				t.Fatalf("%s: server record differs from flynn's c2 encryption", SuiteName(suite))
			}
		}
	}
}

// TestPrepareServesOneHandshake: a prepared handshake writes one HELLO (a
// second is refused: its ephemeral and es would be reused), cannot Finish
// before it, and gives the bytes Hello gives with the same randomness; two
// preparations never share an ephemeral.
func TestPrepareServesOneHandshake(t *testing.T) {
	r, k := testRing(t)
	ch, err := Prepare(SuiteChaChaPoly, k.ID, k.Public[:], &fixedRand{b: 7})
	if err != nil {
		t.Fatal(err)
	}
	if ch.KeyID() != k.ID {
		t.Fatalf("KeyID = %d", ch.KeyID())
	}
	if _, _, err := ch.Finish(make([]byte, 64)); err == nil {
		t.Fatal("Finish before Hello must fail")
	}
	hello, err := ch.Hello([]byte("auth"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Hello([]byte("auth")); !errors.Is(err, ErrUsed) {
		t.Fatalf("second Hello: %v, want ErrUsed", err)
	}
	_, want, _ := Hello(SuiteChaChaPoly, k.ID, k.Public[:], []byte("auth"), &fixedRand{b: 7})
	if !bytes.Equal(hello, want) {
		t.Fatal("prepared HELLO differs from Hello's")
	}
	sh, p, err := r.Accept(hello, nil)
	if err != nil || string(p) != "auth" {
		t.Fatalf("accept: %q, %v", p, err)
	}
	out, srv, err := sh.Finish(nil, []byte("ok"))
	if err != nil {
		t.Fatal(err)
	}
	p, cli, err := ch.Finish(out)
	if err != nil || string(p) != "ok" {
		t.Fatalf("finish: %q, %v", p, err)
	}
	if got, _, err := srv.Open(cli.Seal(nil, []byte("x")), 64); err != nil || string(got) != "x" {
		t.Fatalf("transport: %q, %v", got, err)
	}
	if _, _, err := ch.Finish(out); err == nil {
		t.Fatal("a second Finish must fail")
	}
	a, _ := Prepare(SuiteChaChaPoly, k.ID, k.Public[:], nil)
	b, _ := Prepare(SuiteChaChaPoly, k.ID, k.Public[:], nil)
	if a.e.pub == b.e.pub {
		t.Fatal("two preparations share an ephemeral")
	}
	if _, err := Prepare(SuiteChaChaPoly, k.ID, make([]byte, 32), nil); err == nil {
		t.Fatal("a low-order server key was accepted")
	}
}

// TestPregenerated: the server's pre-generated ephemerals are each used once.
func TestPregenerated(t *testing.T) {
	for Pregenerate() {
	}
	if Pregenerated() != EphemeralStore {
		t.Fatalf("store holds %d, want %d", Pregenerated(), EphemeralStore)
	}
	r, k := testRing(t)
	seen := map[string]bool{}
	for range 50 {
		_, hello, _ := Hello(SuiteChaChaPoly, k.ID, k.Public[:], nil, nil)
		sh, _, err := r.Accept(hello, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := sh.Finish(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := string(out[:DHLen])
		if seen[e] {
			t.Fatal("an ephemeral key was used twice")
		}
		seen[e] = true
		if _, _, err := sh.Finish(nil, nil); err == nil {
			t.Fatal("a second Finish on one handshake must fail")
		}
	}
	if Pregenerated() != EphemeralStore-50 {
		t.Fatalf("store holds %d after 50 handshakes, want %d", Pregenerated(), EphemeralStore-50)
	}
}

// BenchmarkServerHandshakePregenerated: the server's handshake with its
// ephemeral taken from the store (refilled outside the timer), as the
// gateway's workers run it when they had idle time before the burst.
func BenchmarkServerHandshakePregenerated(b *testing.B) {
	r, k := testRing(b)
	auth := make([]byte, 128)
	_, hello, _ := Hello(SuiteChaChaPoly, k.ID, k.Public[:], auth, nil)
	authOK := make([]byte, 60)
	b.ReportAllocs()
	for b.Loop() {
		if Pregenerated() == 0 {
			b.StopTimer()
			for Pregenerate() {
			}
			b.StartTimer()
		}
		sh, _, err := r.Accept(hello, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := sh.Finish(nil, authOK); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkX25519: one DH (circl, x25519.go), as with the static key (es)
// or an ephemeral (ee).
func BenchmarkX25519(b *testing.B) {
	e, _ := newEphemeral(nil)
	p, _ := newEphemeral(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.dh(p.pub[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkECDHX25519: the same DH on crypto/ecdh, for comparison.
func BenchmarkECDHX25519(b *testing.B) {
	e, _ := newEphemeral(nil)
	p, _ := newEphemeral(nil)
	k, _ := ecdh.X25519().NewPrivateKey(e.priv[:])
	pub, _ := ecdh.X25519().NewPublicKey(p.pub[:])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.ECDH(pub); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientHandshake(b *testing.B) { benchClientHandshake(b, false) }

// BenchmarkClientHandshakePrepared: what is left at connect time for a
// client that prepared its handshake while idle (Prepare outside the timer):
// the HELLO body and Finish, one X25519.
func BenchmarkClientHandshakePrepared(b *testing.B) { benchClientHandshake(b, true) }

// benchClientHandshake times a client's side of the handshake (the
// server's answer is made outside the timer); prepared leaves Prepare out
// of the timed part too.
func benchClientHandshake(b *testing.B, prepared bool) {
	r, k := testRing(b)
	auth := make([]byte, 128)
	for Pregenerate() {
	}
	b.ReportAllocs()
	for b.Loop() {
		var (
			ch    *ClientHandshake
			hello []byte
			err   error
		)
		if prepared {
			b.StopTimer()
			if ch, err = Prepare(SuiteChaChaPoly, k.ID, k.Public[:], nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			hello, err = ch.Hello(auth)
		} else {
			ch, hello, err = Hello(SuiteChaChaPoly, k.ID, k.Public[:], auth, nil)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		sh, _, _ := r.Accept(hello, &fixedRand{})
		out, _, _ := sh.Finish(nil, auth[:60])
		b.StartTimer()
		if _, _, err := ch.Finish(out); err != nil {
			b.Fatal(err)
		}
	}
}

// TestEphemeralStoreTarget: SetEphemeralStore bounds what Pregenerate fills
// (a gateway worker's share of the host), clamped to EphemeralStore.
func TestEphemeralStoreTarget(t *testing.T) {
	defer SetEphemeralStore(EphemeralStore)
	for Pregenerated() > 0 {
		_, _ = takeEphemeral()
	}
	SetEphemeralStore(64)
	for Pregenerate() {
	}
	if Pregenerated() != 64 || EphemeralTarget() != 64 {
		t.Fatalf("store holds %d, target %d; want 64", Pregenerated(), EphemeralTarget())
	}
	SetEphemeralStore(1 << 20)
	if EphemeralTarget() != EphemeralStore {
		t.Fatalf("target %d, want it clamped to %d", EphemeralTarget(), EphemeralStore)
	}
	SetEphemeralStore(-1)
	if Pregenerate() || EphemeralTarget() != 0 {
		t.Fatal("a store of 0 still filled")
	}
}

// BenchmarkStoreFill: a gateway worker's start-up cost of pre-generating
// its store: the whole 1,024 and a 60-worker host's share (64).
func BenchmarkStoreFill(b *testing.B) {
	defer SetEphemeralStore(EphemeralStore)
	for _, n := range []int{EphemeralStore, 64} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			SetEphemeralStore(n)
			for b.Loop() {
				b.StopTimer()
				for Pregenerated() > 0 {
					_, _ = takeEphemeral()
				}
				b.StartTimer()
				for Pregenerate() {
				}
			}
		})
	}
}
