package codec

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

func TestHeaderLayout(t *testing.T) {
	// The example frame of docs/protocol.md: HEARTBEAT, seq 7.
	got := HeaderOnly(CmdHeartbeat, 7)
	if h := hex.EncodeToString(got[:]); h != "d710030007000000" {
		t.Fatalf("heartbeat frame = %s", h)
	}
	f := AppendFrame(nil, CmdRequest, 0, 0x0102, []byte{0xAA, 0xBB, 0xCC})
	if h := hex.EncodeToString(f); h != "d710050102000003aabbcc" {
		t.Fatalf("request frame = %s", h)
	}
	h, err := ParseHeader(f, 0)
	if err != nil || h.Cmd != CmdRequest || h.Seq != 0x0102 || h.Len != 3 || h.Version != 1 {
		t.Fatalf("parse = %+v %v", h, err)
	}
}

func TestParseHeaderErrors(t *testing.T) {
	good := HeaderOnly(CmdHeartbeat, 1)
	for name, tc := range map[string]struct {
		mut  func(b []byte)
		want error
	}{
		"magic":   {func(b []byte) { b[0] = 'G' }, ErrBadMagic},
		"version": {func(b []byte) { b[1] = 0x20 }, ErrBadVersion},
		"flags":   {func(b []byte) { b[1] = 0x18 }, ErrBadFlags},
		"size":    {func(b []byte) { b[5], b[6], b[7] = 0, 0x10, 0x01 }, ErrTooLarge},
	} {
		b := good
		tc.mut(b[:])
		if _, err := ParseHeader(b[:], 4096); err != tc.want {
			t.Errorf("%s: got %v want %v", name, err, tc.want)
		}
	}
	b := good
	b[1] |= FlagEncrypted
	if _, err := ParseHeader(b[:], 0); err != nil {
		t.Errorf("known flag rejected: %v", err)
	}
}

func TestSplitPartialAndMany(t *testing.T) {
	var stream []byte
	bodies := [][]byte{nil, []byte("a"), bytes.Repeat([]byte("z"), 1000), nil}
	for i, b := range bodies {
		stream = AppendFrame(stream, CmdRequest, 0, uint16(i), b)
	}
	// Every prefix either yields whole frames or asks for more; never an error.
	for cut := 0; cut <= len(stream); cut++ {
		buf := stream[:cut]
		n := 0
		for {
			f, m, err := Split(buf[n:], 0)
			if err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
			if m == 0 {
				break
			}
			if !bytes.Equal(f.Body, bodies[f.Seq]) {
				t.Fatalf("cut %d: frame %d body mismatch", cut, f.Seq)
			}
			n += m
		}
	}
	if _, _, err := Split([]byte{'x'}, 0); err != ErrBadMagic {
		t.Fatalf("one garbage byte: %v", err)
	}
}

func TestSplitNoCopy(t *testing.T) {
	f := AppendFrame(nil, CmdRequest, 0, 1, []byte("abc"))
	fr, _, _ := Split(f, 0)
	fr.Body[0] = 'X'
	if f[HeaderSize] != 'X' {
		t.Fatal("Split copied the body")
	}
}

func TestHeaderOnlyZeroAlloc(t *testing.T) {
	frame := HeaderOnly(CmdHeartbeat, 9)
	buf := append(frame[:], frame[:]...)
	if n := testing.AllocsPerRun(1000, func() {
		off := 0
		for off < len(buf) {
			_, m, err := Split(buf[off:], 0)
			if err != nil || m == 0 {
				panic("split")
			}
			off += m
		}
	}); n != 0 {
		t.Fatalf("decode allocates %v times", n)
	}
}

func BenchmarkDecodeHeartbeat(b *testing.B) {
	frame := HeaderOnly(CmdHeartbeat, 9)
	b.ReportAllocs()
	b.SetBytes(HeaderSize)
	for b.Loop() {
		f, n, err := Split(frame[:], 0)
		if err != nil || n != HeaderSize || f.Cmd != CmdHeartbeat {
			b.Fatal("bad")
		}
	}
}

func BenchmarkDecodeRequest1K(b *testing.B) {
	frame := AppendFrame(nil, CmdRequest, 0, 9, make([]byte, 1024))
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if _, n, err := Split(frame, 0); err != nil || n != len(frame) {
			b.Fatal("bad")
		}
	}
}

func BenchmarkEncodeHeartbeat(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendHeader(buf[:0], CmdHeartbeat, 0, 9, 0)
	}
}

func BenchmarkEncodeRequest1K(b *testing.B) {
	body := make([]byte, 1024)
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(HeaderSize + len(body)))
	for b.Loop() {
		buf = AppendFrame(buf[:0], CmdRequest, 0, 9, body)
	}
}

// FuzzSplit feeds arbitrary bytes, cut at random points, to the splitter:
// it must never panic, never read past a frame, and find the same frames
// whatever the cuts.
func FuzzSplit(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, CmdAuth, 0, 0, []byte("tok")), CmdHeartbeat, 0, 1, nil), uint64(1))
	f.Add([]byte{Magic, 0x10, 5, 0, 1, 0xff, 0xff, 0xff}, uint64(2))
	f.Add([]byte("GET / HTTP/1.1\r\n"), uint64(3))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		whole := splitAll(t, [][]byte{data})
		rng := rand.New(rand.NewPCG(seed, seed^0x9e37))
		var chunks [][]byte
		for rest := data; len(rest) > 0; {
			n := 1 + rng.IntN(len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		cut := splitAll(t, chunks)
		if len(whole) != len(cut) {
			t.Fatalf("%d frames whole, %d when cut", len(whole), len(cut))
		}
		for i := range whole {
			if whole[i] != cut[i] {
				t.Fatalf("frame %d differs", i)
			}
		}
	})
}

// splitAll feeds chunks to a streaming buffer as a server would and returns
// a fingerprint of each frame found (or of the error that stopped it).
func splitAll(t *testing.T, chunks [][]byte) []string {
	var buf, out = []byte(nil), []string(nil)
	for _, c := range chunks {
		buf = append(buf, c...)
		for {
			f, n, err := Split(buf, 4096)
			if err != nil {
				return append(out, "err:"+err.Error())
			}
			if n == 0 {
				break
			}
			if n != HeaderSize+int(f.Len) || len(f.Body) != int(f.Len) || n > len(buf) {
				t.Fatalf("inconsistent frame: n=%d len=%d", n, f.Len)
			}
			out = append(out, hex.EncodeToString(buf[:n]))
			buf = buf[n:]
		}
	}
	return out
}
