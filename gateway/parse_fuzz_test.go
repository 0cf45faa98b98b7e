package gateway

import (
	"bytes"
	"fmt"
	"testing"
	"time"

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

// FuzzParseAuth: the hand-rolled Auth decoder agrees with the protobuf
// library on every input the library accepts.
func FuzzParseAuth(f *testing.F) {
	b, _ := proto.Marshal(&pb.Auth{Token: "tok", Device: "phone", Network: pb.Network_NETWORK_WIFI, ClientVersion: "1.0"})
	f.Add(b)
	f.Add([]byte{0x18, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, ok := parseAuth(data)
		var ref pb.Auth
		if proto.Unmarshal(data, &ref) != nil {
			return
		}
		want := ref.Network // out-of-range networks are clamped to UNKNOWN (docs/protocol.md)
		if want < 0 || want > pb.Network_NETWORK_CELLULAR {
			want = pb.Network_NETWORK_UNKNOWN
		}
		if !ok || string(a.token) != ref.Token || string(a.device) != ref.Device || a.network != want {
			t.Fatalf("mismatch: %q %q %v vs %v", a.token, a.device, a.network, &ref)
		}
	})
}

func TestAuthOKEncoding(t *testing.T) {
	s, _ := New(Config{Keys: testKeys, Node: "n1"})
	c := &conn{uid: 42, device: "phone", network: pb.Network_NETWORK_CELLULAR}
	f, n, err := codec.Split(s.appendAuthOK(nil, c), 0)
	if err != nil || n == 0 || f.Cmd != codec.CmdAuthOK {
		t.Fatal(err)
	}
	var ok pb.AuthOK
	if err := proto.Unmarshal(f.Body, &ok); err != nil {
		t.Fatal(err)
	}
	p := s.HeartbeatPolicies().Cellular
	hb := ok.Heartbeat
	if ok.Uid != 42 || ok.Device != "phone" || ok.Node != "n1" || ok.MaxBody != 64<<10 || ok.ServerTimeMs == 0 ||
		hb.MinIntervalS != uint32(p.Min/time.Second) || hb.IdleTimeoutS != uint32(p.Idle/time.Second) ||
		hb.FirstIntervalS < hb.MinIntervalS/2 || hb.FirstIntervalS > hb.MinIntervalS || hb.Network != pb.Network_NETWORK_CELLULAR {
		t.Fatalf("AUTH_OK %v", &ok)
	}
	if n := testing.AllocsPerRun(100, func() { _ = s.appendAuthOK(make([]byte, 0, 256), c) }); n > 1 {
		t.Fatalf("AUTH_OK encoding allocates %v times", n)
	}
}
