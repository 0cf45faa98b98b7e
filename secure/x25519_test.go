package secure

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"testing"
)

// TestX25519MatchesECDH: the DH and the fixed-base public key give
// crypto/ecdh's bytes for random scalars and points (points include
// arbitrary 32-byte strings, top bit set, twist points: X25519 takes any).
func TestX25519MatchesECDH(t *testing.T) {
	for i := range 2000 {
		var k, p [32]byte
		rand.Read(k[:])
		rand.Read(p[:])
		if i%3 == 0 { // a real public key
			q, _ := ecdh.X25519().NewPrivateKey(p[:])
			copy(p[:], q.PublicKey().Bytes())
		}
		ek, err := ecdh.X25519().NewPrivateKey(k[:])
		if err != nil {
			t.Fatal(err)
		}
		var pub [32]byte
		x25519Base(&pub, &k)
		if !bytes.Equal(pub[:], ek.PublicKey().Bytes()) {
			t.Fatalf("x25519Base(%x) = %x, ecdh %x", k, pub, ek.PublicKey().Bytes())
		}
		ep, _ := ecdh.X25519().NewPublicKey(p[:])
		want, werr := ek.ECDH(ep)
		var got [32]byte
		gerr := x25519(&got, &k, p[:])
		if (werr == nil) != (gerr == nil) || (werr == nil && !bytes.Equal(got[:], want)) {
			t.Fatalf("x25519(%x, %x) = %x, %v; ecdh %x, %v", k, p, got, gerr, want, werr)
		}
	}
}

// TestX25519RFC7748: section 5.2's first vector and section 6.1's key
// agreement.
func TestX25519RFC7748(t *testing.T) {
	h := func(s string) (b [32]byte) {
		d, _ := hex.DecodeString(s)
		copy(b[:], d)
		return b
	}
	for _, v := range []struct{ k, u, out string }{
		{"a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4", "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c", "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"},
	} {
		k, u, want := h(v.k), h(v.u), h(v.out)
		var got [32]byte
		if err := x25519(&got, &k, u[:]); err != nil || got != want {
			t.Fatalf("X25519(%s, %s) = %x, %v", v.k, v.u, got, err)
		}
	}
	a, b := h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"), h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
	var apub, bpub, s1, s2 [32]byte
	x25519Base(&apub, &a)
	x25519Base(&bpub, &b)
	if apub != h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a") || bpub != h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f") {
		t.Fatalf("public keys %x %x", apub, bpub)
	}
	_ = x25519(&s1, &a, bpub[:])
	_ = x25519(&s2, &b, apub[:])
	if s1 != s2 || s1 != h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742") {
		t.Fatalf("shared %x %x", s1, s2)
	}
	// Low-order points and non-canonical encodings: refused exactly when
	// crypto/ecdh refuses them (an all-zero result).
	ff := "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
	refused := 0
	for _, u := range []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"ec" + ff + "7f", "ed" + ff + "7f", "ee" + ff + "7f", // p-1, p, p+1
		"cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
		"4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
		"d9" + ff + "ff", "da" + ff + "ff", "db" + ff + "ff",
	} {
		pt := h(u)
		var out [32]byte
		err := x25519(&out, &a, pt[:])
		ek, _ := ecdh.X25519().NewPrivateKey(a[:])
		ep, _ := ecdh.X25519().NewPublicKey(pt[:])
		want, werr := ek.ECDH(ep)
		if (err == nil) != (werr == nil) || (err == nil && !bytes.Equal(out[:], want)) {
			t.Fatalf("point %s: %x, %v; crypto/ecdh %x, %v", u, out, err, want, werr)
		}
		if err != nil {
			refused++
		}
	}
	if refused < 6 {
		t.Fatalf("only %d low-order points refused", refused)
	}
}

func BenchmarkX25519Base(b *testing.B) {
	var k, out [32]byte
	rand.Read(k[:])
	b.ReportAllocs()
	for b.Loop() {
		x25519Base(&out, &k)
	}
}

// BenchmarkECDHNewPrivateKey: an ephemeral key on crypto/ecdh (the full
// ladder), what x25519Base replaced.
func BenchmarkECDHNewPrivateKey(b *testing.B) {
	var k [32]byte
	rand.Read(k[:])
	b.ReportAllocs()
	for b.Loop() {
		_, _ = ecdh.X25519().NewPrivateKey(k[:])
	}
}
