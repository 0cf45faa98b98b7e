package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

var testKeys = func() *auth.KeySet {
	ks, err := auth.NewKeySet(1, map[uint32][]byte{1: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		panic(err)
	}
	return ks
}()

// startServer runs a gateway on 127.0.0.1:0 with logging off.
func startServer(t testing.TB, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{
		Listen: "127.0.0.1:0", Keys: testKeys, Loops: 2,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		WheelTick: 20 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func token(t testing.TB, uid uint64, device string, ttl time.Duration) string {
	t.Helper()
	tok, err := testKeys.Mint(uid, device, time.Now().Add(ttl))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// wire is a raw-protocol test client: send bytes, expect frames, expect a close.
type wire struct {
	t  testing.TB
	c  net.Conn
	rd []byte
}

func dialWire(t testing.TB, addr string) *wire {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &wire{t: t, c: c}
}

func (w *wire) send(b []byte) {
	w.t.Helper()
	if _, err := w.c.Write(b); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

func (w *wire) sendFrame(cmd codec.Cmd, seq uint16, m proto.Message) {
	w.t.Helper()
	var body []byte
	if m != nil {
		body, _ = proto.Marshal(m)
	}
	w.send(codec.AppendFrame(nil, cmd, 0, seq, body))
}

// next reads the next frame, failing the test after timeout.
func (w *wire) next(timeout time.Duration) (codec.Frame, error) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 4096)
	for {
		f, n, err := codec.Split(w.rd, codec.MaxBodyLimit)
		if err != nil {
			w.t.Fatalf("bad frame from server: %v", err)
		}
		if n > 0 {
			f.Body = append([]byte(nil), f.Body...)
			w.rd = w.rd[n:]
			return f, nil
		}
		_ = w.c.SetReadDeadline(deadline)
		m, err := w.c.Read(buf)
		if m > 0 {
			w.rd = append(w.rd, buf[:m]...)
			continue
		}
		return f, err
	}
}

func (w *wire) expect(cmd codec.Cmd, timeout time.Duration) codec.Frame {
	w.t.Helper()
	f, err := w.next(timeout)
	if err != nil {
		w.t.Fatalf("want %v, got error %v", cmd, err)
	}
	if f.Cmd != cmd {
		w.t.Fatalf("want %v, got %v (body %x)", cmd, f.Cmd, f.Body)
	}
	return f
}

// expectClose wants an ERROR with code, then EOF.
func (w *wire) expectClose(code codec.Code, timeout time.Duration) {
	w.t.Helper()
	f := w.expect(codec.CmdError, timeout)
	var e pb.Error
	if err := proto.Unmarshal(f.Body, &e); err != nil {
		w.t.Fatal(err)
	}
	if codec.Code(e.Code) != code {
		w.t.Fatalf("want close code %d (%v), got %d (%s)", code, code, e.Code, e.Message)
	}
	if f, err := w.next(timeout); err != io.EOF {
		w.t.Fatalf("want EOF after ERROR, got frame %v err %v", f.Cmd, err)
	}
}

func (w *wire) auth(tok, device string) *pb.AuthOK {
	w.t.Helper()
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: tok, Device: device})
	f := w.expect(codec.CmdAuthOK, 2*time.Second)
	var ok pb.AuthOK
	if err := proto.Unmarshal(f.Body, &ok); err != nil {
		w.t.Fatal(err)
	}
	return &ok
}

func (w *wire) call(seq uint16, method string, body []byte) *pb.Response {
	w.t.Helper()
	w.sendFrame(codec.CmdRequest, seq, &pb.Request{Method: method, Body: body})
	f := w.expect(codec.CmdResponse, 5*time.Second)
	if f.Seq != seq {
		w.t.Fatalf("response seq %d, want %d", f.Seq, seq)
	}
	var r pb.Response
	if err := proto.Unmarshal(f.Body, &r); err != nil {
		w.t.Fatal(err)
	}
	return &r
}

// checkFor polls fn until it returns nil or timeout passes (testutil.CheckFor).
func checkFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, fn)
}

// slowEcho is an embedded backend whose "slow" method answers with the
// request body after 100 ms (echo answers at once).
func slowEcho() *backend.Embedded {
	be := backend.NewEmbedded()
	be.Handle("slow", func(ctx context.Context, r *backend.Request) ([]byte, error) {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
		return r.Body, nil
	})
	return be
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }
