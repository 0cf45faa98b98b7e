package gateway

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// FuzzParseRequest: the hand-rolled Request decoder must agree with the
// protobuf library on every input the library accepts, and never panic.
func FuzzParseRequest(f *testing.F) {
	b, _ := proto.Marshal(&pb.Request{Method: "echo", Body: []byte("x"), TimeoutMs: 100})
	f.Add(b)
	f.Add([]byte{0x0a, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		method, body, timeout, ok := parseRequest(data)
		var ref pb.Request
		if proto.Unmarshal(data, &ref) != nil {
			return
		}
		if ok != (ref.Method != "") {
			t.Fatalf("ok=%v but library method=%q", ok, ref.Method)
		}
		if ok && (string(method) != ref.Method || !bytes.Equal(body, ref.Body) || uint32(timeout) != ref.TimeoutMs) {
			t.Fatalf("mismatch: %q %x %d vs %v", method, body, timeout, &ref)
		}
	})
}

func TestAppendResponseRoundTrip(t *testing.T) {
	f := appendResponse(nil, 9, codec.CodeBusy, "busy", []byte("b"), 250)
	fr, n, err := codec.Split(f, 0)
	if err != nil || n != len(f) || fr.Cmd != codec.CmdResponse || fr.Seq != 9 {
		t.Fatal(err)
	}
	var r pb.Response
	if err := proto.Unmarshal(fr.Body, &r); err != nil || r.Code != uint32(codec.CodeBusy) || r.Message != "busy" || string(r.Body) != "b" || r.RetryAfterMs != 250 {
		t.Fatalf("%v %v", &r, err)
	}
}

func TestPongZeroAlloc(t *testing.T) {
	if n := testing.AllocsPerRun(1000, func() { _ = pongFrame(12345) }); n != 0 {
		t.Fatal(n)
	}
	if f := pongFrame(0x0102); f[3] != 1 || f[4] != 2 || f[2] != byte(codec.CmdPong) {
		t.Fatalf("%x", f)
	}
}

// The hex examples in docs/protocol.md are what the code produces.
func TestProtocolDocExamples(t *testing.T) {
	req, _ := proto.Marshal(&pb.Request{Method: "echo", Body: []byte("hi")})
	if got := fmt.Sprintf("%x", codec.AppendFrame(nil, codec.CmdRequest, 0, 258, req)); got != "d71005010200000a0a046563686f12026869" {
		t.Fatalf("request example: %s", got)
	}
	if got := fmt.Sprintf("%x", appendResponse(nil, 258, 0, "", []byte("hi"), 0)); got != "d7100601020000041a026869" {
		t.Fatalf("response example: %s", got)
	}
	auth, _ := proto.Marshal(&pb.Auth{Token: "abc", Device: "d1"})
	if got := fmt.Sprintf("%x", auth); got != "0a0361626312026431" {
		t.Fatalf("auth example: %s", got)
	}
}
