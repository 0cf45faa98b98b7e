package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

func TestAuthEchoHeartbeat(t *testing.T) {
	s := startServer(t, nil)
	w := dialWire(t, s.Addr())
	ok := w.auth(token(t, 42, "phone", time.Hour), "")
	if ok.Uid != 42 || ok.Device != "phone" || ok.Heartbeat == nil || ok.Heartbeat.IdleTimeoutS == 0 {
		t.Fatalf("AUTH_OK = %v", ok)
	}
	r := w.call(7, "echo", []byte("hello"))
	if r.Code != 0 || string(r.Body) != "hello" {
		t.Fatalf("echo = %v", r)
	}
	w.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 999, nil))
	if f := w.expect(codec.CmdPong, time.Second); f.Seq != 999 || len(f.Body) != 0 {
		t.Fatalf("pong = %+v", f)
	}
	r = w.call(8, "nope", nil)
	if codec.Code(r.Code) != codec.CodeUnknownMethod {
		t.Fatalf("unknown method: %v", r)
	}
}

func TestPipelinedFramesInOneWrite(t *testing.T) {
	s := startServer(t, nil)
	w := dialWire(t, s.Addr())
	var b []byte
	body, _ := proto.Marshal(&pb.Auth{Token: token(t, 1, "", time.Hour), Device: "d"})
	b = codec.AppendFrame(b, codec.CmdAuth, 0, 0, body)
	for i := 1; i <= 20; i++ {
		b = codec.AppendFrame(b, codec.CmdHeartbeat, 0, uint16(i), nil)
	}
	w.send(b)
	w.expect(codec.CmdAuthOK, time.Second)
	for i := 1; i <= 20; i++ {
		if f := w.expect(codec.CmdPong, time.Second); f.Seq != uint16(i) {
			t.Fatalf("pong %d has seq %d", i, f.Seq)
		}
	}
}

func TestFrameSplitAcrossWrites(t *testing.T) {
	s := startServer(t, nil)
	w := dialWire(t, s.Addr())
	w.auth(token(t, 1, "", time.Hour), "d")
	body, _ := proto.Marshal(&pb.Request{Method: "echo", Body: bytes.Repeat([]byte("x"), 3000)})
	frame := codec.AppendFrame(nil, codec.CmdRequest, 0, 5, body)
	for _, cut := range []int{1, 3, 8, 9, 100, len(frame) - 1} {
		w.send(frame[:cut])
		time.Sleep(5 * time.Millisecond)
		w.send(frame[cut:])
		f := w.expect(codec.CmdResponse, 2*time.Second)
		var r pb.Response
		_ = proto.Unmarshal(f.Body, &r)
		if len(r.Body) != 3000 {
			t.Fatalf("cut %d: echo len %d", cut, len(r.Body))
		}
	}
}

func TestBadInputIsClosedWithCode(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.AuthTimeout = 200 * time.Millisecond
		c.FrameTimeout = 300 * time.Millisecond
		c.MaxBody = 1024
		c.MaxFrameRate = 50
	})
	// A well-behaved client alongside must keep being served throughout.
	good := dialWire(t, s.Addr())
	good.auth(token(t, 1000, "", time.Hour), "good")
	stop := make(chan struct{})
	goodErr := make(chan error, 1)
	go func() {
		seq := uint16(0)
		for {
			select {
			case <-stop:
				goodErr <- nil
				return
			default:
			}
			seq++
			good.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, seq, nil))
			f, err := good.next(2 * time.Second)
			if err != nil || f.Cmd != codec.CmdPong || f.Seq != seq {
				goodErr <- fmt.Errorf("good client: %v %v", f.Cmd, err)
				return
			}
			time.Sleep(30 * time.Millisecond)
		}
	}()

	cases := []struct {
		name string
		run  func(w *wire)
		code codec.Code
	}{
		{"garbage", func(w *wire) { w.send([]byte("SSH-2.0-OpenSSH\r\n")) }, codec.CodeProtocol},
		{"wrong magic", func(w *wire) { w.send([]byte{0xAA, 0x10, 1, 0, 0, 0, 0, 0}) }, codec.CodeProtocol},
		{"bad version", func(w *wire) { w.send([]byte{codec.Magic, 0x70, 1, 0, 0, 0, 0, 0}) }, codec.CodeBadVersion},
		{"oversize body", func(w *wire) { w.send(codec.AppendHeader(nil, codec.CmdAuth, 0, 0, 1025)) }, codec.CodeFrameTooBig},
		{"no auth before deadline", func(w *wire) {}, codec.CodeAuthTimeout},
		{"header never completes", func(w *wire) { w.send([]byte{codec.Magic, 0x10, 1}) }, codec.CodeAuthTimeout},
		{"request before auth", func(w *wire) { w.sendFrame(codec.CmdRequest, 1, &pb.Request{Method: "echo"}) }, codec.CodeNotAuthed},
		{"forged token", func(w *wire) {
			tok := []byte(token(t, 5, "", time.Hour))
			tok[len(tok)-3] ^= 1
			w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: string(tok)})
		}, codec.CodeBadToken},
		{"garbage token", func(w *wire) { w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: "not-a-token"}) }, codec.CodeBadToken},
		{"expired token", func(w *wire) { w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 5, "", -time.Second)}) }, codec.CodeTokenExpired},
		{"device mismatch", func(w *wire) {
			w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 5, "a", time.Hour), Device: "b"})
		}, codec.CodeBadToken},
		{"auth twice", func(w *wire) {
			w.auth(token(t, 6, "", time.Hour), "x")
			w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 6, "", time.Hour)})
		}, codec.CodeAuthTwice},
		{"slowloris after auth", func(w *wire) {
			w.auth(token(t, 7, "", time.Hour), "x")
			w.send(codec.AppendHeader(nil, codec.CmdRequest, 0, 1, 100)[:5])
		}, codec.CodeFrameTooSlow},
		{"flood", func(w *wire) {
			w.auth(token(t, 8, "", time.Hour), "x")
			var b []byte
			for i := 0; i < 200; i++ {
				b = codec.AppendFrame(b, codec.CmdHeartbeat, 0, uint16(i), nil)
			}
			w.send(b)
			for {
				f, err := w.next(2 * time.Second)
				if err != nil {
					t.Fatalf("flood: %v", err)
				}
				if f.Cmd == codec.CmdError {
					w.rd = append(codec.AppendFrame(nil, f.Cmd, f.Flags, f.Seq, f.Body), w.rd...)
					return
				}
			}
		}, codec.CodeFlood},
		{"server-only command", func(w *wire) {
			w.auth(token(t, 9, "", time.Hour), "x")
			w.sendFrame(codec.CmdPush, 0, &pb.Push{Type: 1})
		}, codec.CodeProtocol},
		{"encrypted flag before handshake", func(w *wire) {
			w.send(codec.AppendFrame(nil, codec.CmdAuth, codec.FlagEncrypted, 0, []byte{1, 2, 3}))
		}, codec.CodeProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := dialWire(t, s.Addr())
			w.t = t
			tc.run(w)
			w.expectClose(tc.code, 3*time.Second)
		})
	}
	close(stop)
	if err := <-goodErr; err != nil {
		t.Fatal(err)
	}
}

func TestStaleConnectionEvicted(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.HeartbeatInterval = 100 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	})
	idle := dialWire(t, s.Addr())
	idle.auth(token(t, 1, "", time.Hour), "idle")
	alive := dialWire(t, s.Addr())
	alive.auth(token(t, 2, "", time.Hour), "alive")
	start := time.Now()
	for time.Since(start) < 900*time.Millisecond {
		alive.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 1, nil))
		alive.expect(codec.CmdPong, time.Second)
		time.Sleep(80 * time.Millisecond)
	}
	idle.expectClose(codec.CodeStale, time.Second)
	if el := time.Since(start); el > 900*time.Millisecond+500*time.Millisecond {
		t.Fatalf("eviction took %v", el)
	}
	alive.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 2, nil))
	alive.expect(codec.CmdPong, time.Second)
}

func TestSameDeviceReplaced(t *testing.T) {
	s := startServer(t, nil)
	a := dialWire(t, s.Addr())
	a.auth(token(t, 9, "", time.Hour), "tab")
	other := dialWire(t, s.Addr())
	other.auth(token(t, 9, "", time.Hour), "phone")
	b := dialWire(t, s.Addr())
	b.auth(token(t, 9, "", time.Hour), "tab")
	a.expectClose(codec.CodeReplaced, 2*time.Second)
	n := s.sessions.each(9, "", func(*conn) {})
	if n != 2 {
		t.Fatalf("user 9 has %d connections, want 2", n)
	}
}

func TestBackendErrorsClassified(t *testing.T) {
	be := backend.NewEmbedded()
	calls := 0
	be.Handle("flaky", func(context.Context, *backend.Request) ([]byte, error) {
		calls++
		if calls == 1 {
			return nil, errors.New("connection reset")
		}
		return []byte("ok"), nil
	})
	be.Handle("down", func(context.Context, *backend.Request) ([]byte, error) { return nil, errors.New("down") })
	be.Handle("nope", func(context.Context, *backend.Request) ([]byte, error) {
		return nil, backend.Logical(1234, "insufficient funds")
	})
	be.Handle("slow", func(ctx context.Context, _ *backend.Request) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	be.Handle("whoami", func(_ context.Context, r *backend.Request) ([]byte, error) {
		return fmt.Appendf(nil, "%d/%s", r.UID, r.Device), nil
	})
	s := startServer(t, func(c *Config) { c.Backend = be; c.PoolSize = 1; c.CallTimeout = 200 * time.Millisecond })
	w := dialWire(t, s.Addr())
	w.auth(token(t, 77, "", time.Hour), "dev")
	if r := w.call(1, "flaky", nil); r.Code != 0 || string(r.Body) != "ok" {
		t.Fatalf("system failure not retried: %v", r)
	}
	if r := w.call(2, "down", nil); codec.Code(r.Code) != codec.CodeSystem || r.RetryAfterMs == 0 {
		t.Fatalf("final system failure: %v", r)
	}
	if r := w.call(3, "nope", nil); r.Code != 1234 || r.Message != "insufficient funds" {
		t.Fatalf("logical error not passed through: %v", r)
	}
	if r := w.call(4, "slow", nil); codec.Code(r.Code) != codec.CodeTimeout {
		t.Fatalf("deadline: %v", r)
	}
	if r := w.call(5, "whoami", nil); string(r.Body) != "77/dev" {
		t.Fatalf("identity not forwarded: %q", r.Body)
	}
}

func TestShutdownSendsGoAway(t *testing.T) {
	s := startServer(t, func(c *Config) { c.DrainWindow = 100 * time.Millisecond })
	var ws []*wire
	for i := 0; i < 5; i++ {
		w := dialWire(t, s.Addr())
		w.auth(token(t, uint64(i+1), "", time.Hour), "d")
		ws = append(ws, w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { _ = s.Shutdown(ctx) }()
	for _, w := range ws {
		f := w.expect(codec.CmdGoAway, 3*time.Second)
		var g pb.GoAway
		_ = proto.Unmarshal(f.Body, &g)
		if codec.Code(g.Code) != codec.CodeShutdown || g.ReconnectAfterMs > 1000 {
			t.Fatalf("goaway = %v", &g)
		}
	}
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("server did not stop")
	}
}
