package codec

import "testing"

// Guards for docs/measurements.md's codec rows: every parse and encode on
// the frame path allocates nothing (machine-independent, unlike ns/op).
func TestGuardCodecZeroAllocs(t *testing.T) {
	hb := HeaderOnly(CmdHeartbeat, 9)
	req := AppendFrame(nil, CmdRequest, 0, 9, make([]byte, 1024))
	body := make([]byte, 1024)
	buf := make([]byte, 0, 2048)
	var hdr [HeaderSize]byte
	cases := []struct {
		name string
		fn   func()
	}{
		{"Split heartbeat", func() {
			if f, n, err := Split(hb[:], 0); err != nil || n != HeaderSize || f.Cmd != CmdHeartbeat {
				panic("split")
			}
		}},
		{"Split 1 KiB request", func() {
			if _, n, err := Split(req, 0); err != nil || n != len(req) {
				panic("split")
			}
		}},
		{"ParseHeader", func() {
			if _, err := ParseHeader(req, 0); err != nil {
				panic("parse")
			}
		}},
		{"AppendHeader", func() { buf = AppendHeader(buf[:0], CmdHeartbeat, 0, 9, 0) }},
		{"AppendFrame 1 KiB", func() { buf = AppendFrame(buf[:0], CmdRequest, 0, 9, body) }},
		{"PutHeader", func() { PutHeader(hdr[:], CmdPong, 0, 9, 0) }},
		{"HeaderOnly", func() { hdr = HeaderOnly(CmdPong, 9) }},
	}
	for _, c := range cases {
		if n := testing.AllocsPerRun(1000, c.fn); n != 0 {
			t.Errorf("%s allocates %v times per call, want 0", c.name, n)
		}
	}
}
