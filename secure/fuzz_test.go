package secure

import (
	"bytes"
	"testing"

	"github.com/longlink/longlink/codec"
)

// FuzzOpen: the record parser. Properties: arbitrary bytes never open under
// a fresh state (only the peer holding the key can make a record); a record
// sealed from the fuzzed frame opens to exactly that frame; the same record
// with one bit flipped (position from the input) never opens; Open never
// claims more bytes than it was given.
func FuzzOpen(f *testing.F) {
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
	f.Add(hb[:], uint16(0), []byte{0, 0, 24})
	f.Add(codec.AppendFrame(nil, codec.CmdRequest, 0, 3, []byte("hello")), uint16(40), []byte{0xff, 0xff})
	cli, srv := pair(f, SuiteChaChaPoly)
	f.Fuzz(func(t *testing.T, frame []byte, flip uint16, raw []byte) {
		if len(frame) > 1<<12 {
			return
		}
		fresh := *srv
		if fr, n, err := fresh.Open(bytes.Clone(raw), 1<<16); err == nil && n > 0 {
			t.Fatalf("random bytes opened: %x -> %x", raw, fr)
		} else if n > len(raw) {
			t.Fatalf("n %d > len %d", n, len(raw))
		}
		c, s := *cli, *srv
		rec := c.Seal(nil, frame)
		if len(rec) != len(frame)+Overhead {
			t.Fatalf("record %d bytes for a %d-byte frame", len(rec), len(frame))
		}
		bad := bytes.Clone(rec)
		bit := int(flip) % (len(bad) * 8)
		bad[bit/8] ^= 1 << (bit % 8)
		s2 := s
		if fr, n, err := s2.Open(bad, 1<<16); err == nil && n > 0 {
			t.Fatalf("flipped bit %d opened: %x", bit, fr)
		}
		got, n, err := s.Open(rec, 1<<16)
		if err != nil || n != len(rec) || !bytes.Equal(got, frame) {
			t.Fatalf("round trip: %x %d %v, want %x", got, n, err, frame)
		}
	})
}

// FuzzAccept: the handshake parser. Properties: no panic on any input; a
// HELLO that Accept takes is a real client's (the seed) or, if the fuzzer
// builds a valid Noise message, its payload round-trips through Finish; a
// HELLO with any single bit flipped (position from the input) is refused.
func FuzzAccept(f *testing.F) {
	r, k := testRing(f)
	auth := codec.AppendFrame(nil, codec.CmdAuth, 0, 0, []byte("token"))
	_, hello, _ := Hello(SuiteChaChaPoly, k.ID, k.Public[:], auth, nil)
	f.Add(hello, uint16(0))
	f.Add(hello[:HelloPrefix+DHLen+TagSize], uint16(9))
	f.Add([]byte{1, 2, 0, 0, 0, 7}, uint16(1))
	f.Fuzz(func(t *testing.T, in []byte, flip uint16) {
		sh, payload, err := r.Accept(in, nil)
		if err == nil {
			if !bytes.Equal(in, hello) && !bytes.Equal(payload, auth) {
				// a fuzzer-made valid message: it must still finish
				if _, _, err := sh.Finish(nil, nil); err != nil {
					t.Fatalf("accepted but cannot finish: %v", err)
				}
			}
		}
		bad := bytes.Clone(hello)
		bit := int(flip) % (len(bad) * 8)
		bad[bit/8] ^= 1 << (bit % 8)
		if _, _, err := r.Accept(bad, nil); err == nil {
			t.Fatalf("HELLO with bit %d flipped accepted", bit)
		}
	})
}
