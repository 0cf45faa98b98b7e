package gateway

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/secure"
)

type wsClient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dialWS(t testing.TB, addr string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	nc, br, _, err := ws.Dial(ctx, "ws://"+addr+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if br == nil {
		br = bufio.NewReader(nc)
	}
	return &wsClient{t: t, nc: nc, br: br}
}

func (w *wsClient) sendRaw(f ws.Frame) {
	w.t.Helper()
	if err := ws.WriteFrame(w.nc, f); err != nil {
		w.t.Fatal(err)
	}
}

func (w *wsClient) sendFrame(cmd codec.Cmd, seq uint16, m proto.Message) {
	var body []byte
	if m != nil {
		body, _ = proto.Marshal(m)
	}
	w.sendRaw(ws.MaskFrame(ws.NewBinaryFrame(codec.AppendFrame(nil, cmd, 0, seq, body))))
}

// read returns the next WebSocket frame from the server.
func (w *wsClient) read() ws.Frame {
	w.t.Helper()
	_ = w.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	f, err := ws.ReadFrame(w.br)
	if err != nil {
		w.t.Fatalf("read: %v", err)
	}
	if f.Header.Masked {
		w.t.Fatal("server frame is masked")
	}
	return f
}

// expect reads a binary message holding one longlink frame of cmd.
func (w *wsClient) expect(cmd codec.Cmd) codec.Frame {
	w.t.Helper()
	f := w.read()
	if f.Header.OpCode != ws.OpBinary {
		w.t.Fatalf("want binary message, got opcode %v (payload %q)", f.Header.OpCode, f.Payload)
	}
	fr, n, err := codec.Split(f.Payload, codec.MaxBodyLimit)
	if err != nil || n != len(f.Payload) || fr.Cmd != cmd {
		w.t.Fatalf("want one %v frame, got %v (n=%d/%d, err %v)", cmd, fr.Cmd, n, len(f.Payload), err)
	}
	return fr
}

// expectWSClose wants a close frame with status code.
func (w *wsClient) expectWSClose(code uint16) {
	w.t.Helper()
	for {
		f := w.read()
		if f.Header.OpCode == ws.OpClose {
			if got := binary.BigEndian.Uint16(f.Payload); got != code {
				w.t.Fatalf("close status %d (%s), want %d", got, f.Payload[2:], code)
			}
			return
		}
	}
}

func TestWebSocketHappyPath(t *testing.T) {
	s := startServer(t, nil)
	w := dialWS(t, s.Addr())
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 99, "", time.Hour), Device: "browser"})
	var ok pb.AuthOK
	_ = proto.Unmarshal(w.expect(codec.CmdAuthOK).Body, &ok)
	if ok.Uid != 99 {
		t.Fatalf("auth ok %v", &ok)
	}
	w.sendFrame(codec.CmdHeartbeat, 77, nil)
	if f := w.expect(codec.CmdPong); f.Seq != 77 {
		t.Fatalf("pong seq %d", f.Seq)
	}
	w.sendFrame(codec.CmdRequest, 5, &pb.Request{Method: "echo", Body: []byte("over websocket")})
	f := w.expect(codec.CmdResponse)
	var r pb.Response
	_ = proto.Unmarshal(f.Body, &r)
	if f.Seq != 5 || string(r.Body) != "over websocket" {
		t.Fatalf("echo: seq %d %v", f.Seq, &r)
	}
	// RFC 6455 ping is answered with a pong carrying the same payload.
	w.sendRaw(ws.MaskFrame(ws.NewPingFrame([]byte("are you there"))))
	if p := w.read(); p.Header.OpCode != ws.OpPong || string(p.Payload) != "are you there" {
		t.Fatalf("pong: %v %q", p.Header.OpCode, p.Payload)
	}
	// Two longlink frames in one message are fine.
	two := codec.AppendFrame(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 1, nil), codec.CmdHeartbeat, 0, 2, nil)
	w.sendRaw(ws.MaskFrame(ws.NewBinaryFrame(two)))
	w.expect(codec.CmdPong)
	w.expect(codec.CmdPong)
	// A close is echoed.
	w.sendRaw(ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))))
	w.expectWSClose(1000)
}

func TestWebSocketMalformed(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxBody = 1024 })
	good := dialWire(t, s.Addr())
	good.auth(token(t, 1, "", time.Hour), "tcp")

	bin := codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 1, nil)
	cases := []struct {
		name  string
		frame ws.Frame
		code  uint16
	}{
		{"unmasked", ws.NewBinaryFrame(bin), 1002},
		{"bad opcode", ws.MaskFrame(ws.NewFrame(ws.OpCode(0x3), true, bin)), 1002},
		{"text", ws.MaskFrame(ws.NewTextFrame(bin)), 1003},
		{"fragmented", ws.MaskFrame(ws.NewFrame(ws.OpBinary, false, bin)), 1003},
		{"over-size", ws.MaskFrame(ws.NewBinaryFrame(make([]byte, 1024+codec.HeaderSize+secure.Overhead+1))), 1009},
		{"reserved bits", func() ws.Frame {
			f := ws.MaskFrame(ws.NewBinaryFrame(bin))
			f.Header.Rsv = ws.Rsv(true, false, false)
			return f
		}(), 1002},
		{"frame spans messages", ws.MaskFrame(ws.NewBinaryFrame(bin[:5])), 1002},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := dialWS(t, s.Addr())
			w.t = t
			w.sendRaw(tc.frame)
			w.expectWSClose(tc.code)
			good.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 3, nil))
			good.expect(codec.CmdPong, time.Second)
		})
	}
	t.Run("bad token", func(t *testing.T) {
		w := dialWS(t, s.Addr())
		w.t = t
		w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: "forged"})
		var e pb.Error
		_ = proto.Unmarshal(w.expect(codec.CmdError).Body, &e)
		if codec.Code(e.Code) != codec.CodeBadToken {
			t.Fatalf("code %d", e.Code)
		}
		w.expectWSClose(1008)
	})
	t.Run("plain http", func(t *testing.T) {
		nc, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_, _ = nc.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"))
		_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
		resp, _ := io.ReadAll(nc)
		if !strings.HasPrefix(string(resp), "HTTP/1.1 400") {
			t.Fatalf("plain GET got %q", resp)
		}
	})
	t.Run("wrong path", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, _, _, err := ws.Dial(ctx, "ws://"+s.Addr()+"/nope"); err == nil {
			t.Fatal("upgrade on a wrong path accepted")
		}
	})
}

func FuzzParseWSFrame(f *testing.F) {
	f.Add([]byte{0x82, 0x88, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x82, 0xfe, 0xff, 0xff, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseWSFrame(b, 4096)
		if err != nil || fr.hdrLen == 0 {
			return
		}
		if fr.hdrLen > len(b) || fr.length > 4096 || fr.length < 0 {
			t.Fatalf("bad parse: %+v of %d bytes", fr, len(b))
		}
	})
}
