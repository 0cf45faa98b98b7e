package gateway

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

var loopbackNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// sessionPeer is the client address the gateway holds for uid's session
// (what its log lines, the flapping line and its audit report).
func sessionPeer(t testing.TB, s *Server, uid uint64) netip.AddrPort {
	t.Helper()
	var got netip.AddrPort
	checkFor(t, 2*time.Second, func() error {
		if s.sessions.each(uid, "", func(c *conn) { got = s.peerAddr(c) }) != 1 {
			return errorf("no session for uid %d", uid)
		}
		return nil
	})
	return got
}

func TestProxyProtocolRealAddress(t *testing.T) {
	logs := &testutil.SyncBuffer{}
	s := startServer(t, func(c *Config) {
		c.ProxyProtocolFrom = loopbackNets
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	dst := netip.MustParseAddrPort(s.Addr())
	src4 := netip.MustParseAddrPort("198.51.100.7:40001")
	src6 := netip.MustParseAddrPort("[2001:db8::7]:40002")
	for i, tc := range []struct {
		name string
		hdr  []byte
		want netip.AddrPort
	}{
		{"v1", encodeProxyV1(src4, dst), src4},
		{"v2", encodeProxyV2(src4, dst, []byte{0x04, 0, 3, 'a', 'b', 'c'}), src4},
		{"v2 ipv6", encodeProxyV2(src6, netip.MustParseAddrPort("[2001:db8::1]:7100"), nil), src6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid := uint64(7000 + i)
			w := dialWire(t, s.Addr())
			// The header arrives in pieces: the loop waits for the rest.
			w.send(tc.hdr[:5])
			time.Sleep(30 * time.Millisecond)
			w.send(tc.hdr[5:])
			w.auth(token(t, uid, "phone", time.Hour), "phone")
			if r := w.call(1, "echo", []byte("hi")); string(r.Body) != "hi" {
				t.Fatalf("echo = %q", r.Body)
			}
			if got := sessionPeer(t, s, uid); got != tc.want {
				t.Fatalf("gateway sees %v, want %v", got, tc.want)
			}
		})
	}

	// The log lines name the client, not the balancer.
	w := dialWire(t, s.Addr())
	w.send(append(encodeProxyV1(src4, dst), codec.AppendFrame(nil, codec.CmdAuth, 0, 0, mustMarshal(t, &pb.Auth{Token: "garbage"}))...))
	w.expectClose(codec.CodeBadToken, 2*time.Second)
	checkFor(t, 2*time.Second, func() error {
		if !strings.Contains(logs.String(), "auth rejected") || !strings.Contains(logs.String(), "remote="+src4.String()) {
			return errorf("no auth line with remote=%v in %q", src4, logs.String())
		}
		return nil
	})

	// LOCAL (a health check) keeps the socket's address.
	w = dialWire(t, s.Addr())
	w.send(proxyLocalV2)
	w.auth(token(t, 7100, "phone", time.Hour), "phone")
	if got, want := sessionPeer(t, s, 7100), netip.MustParseAddrPort(w.c.LocalAddr().String()); got != want {
		t.Fatalf("LOCAL: gateway sees %v, want the socket's %v", got, want)
	}

	// WebSocket after the header.
	d := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_, err = nc.Write(encodeProxyV2(src4, dst, nil))
		}
		return nc, err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	nc, br, _, err := d.Dial(ctx, "ws://"+s.Addr()+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if br == nil {
		br = bufio.NewReader(nc)
	}
	wc := &wsClient{t: t, nc: nc, br: br}
	wc.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 7200, "web", time.Hour), Device: "web"})
	wc.expect(codec.CmdAuthOK)
	if got := sessionPeer(t, s, 7200); got != src4 {
		t.Fatalf("websocket: gateway sees %v, want %v", got, src4)
	}
}

func TestProxyProtocolRequiredFromBalancers(t *testing.T) {
	s := startServer(t, func(c *Config) { c.ProxyProtocolFrom = loopbackNets })
	for name, first := range map[string][]byte{
		"plain auth": codec.AppendFrame(nil, codec.CmdAuth, 0, 0, mustMarshal(t, &pb.Auth{Token: token(t, 1, "d", time.Hour)})),
		"bad v1":     []byte("PROXY TCP4 1.2.3.4 nope 1 2\r\n"),
		"v1 no crlf": []byte("PROXY UNKNOWN " + strings.Repeat("x", 120)),
	} {
		t.Run(name, func(t *testing.T) {
			w := dialWire(t, s.Addr())
			w.send(first)
			w.expectClose(codec.CodeProtocol, 2*time.Second)
		})
	}
	t.Run("header never finished", func(t *testing.T) {
		s := startServer(t, func(c *Config) { c.ProxyProtocolFrom = loopbackNets; c.AuthTimeout = 200 * time.Millisecond })
		w := dialWire(t, s.Addr())
		w.send([]byte("PROXY TCP4 1.2"))
		w.expectClose(codec.CodeAuthTimeout, 3*time.Second)
	})
}

func TestProxyProtocolRefusedFromElsewhere(t *testing.T) {
	for name, nets := range map[string][]netip.Prefix{"off": nil, "other network": {netip.MustParsePrefix("10.0.0.0/8")}} {
		t.Run(name, func(t *testing.T) {
			logs := &testutil.SyncBuffer{}
			s := startServer(t, func(c *Config) {
				c.ProxyProtocolFrom = nets
				c.Logger = slog.New(slog.NewTextHandler(logs, nil))
			})
			dst := netip.MustParseAddrPort(s.Addr())
			for _, hdr := range [][]byte{encodeProxyV1(netip.MustParseAddrPort("1.2.3.4:5"), dst), encodeProxyV2(netip.MustParseAddrPort("1.2.3.4:5"), dst, nil)} {
				w := dialWire(t, s.Addr())
				w.send(hdr)
				w.expectClose(codec.CodeProtocol, 2*time.Second)
			}
			if n := strings.Count(logs.String(), "PROXY header from a network not in --proxy-protocol-from"); n != 2 {
				t.Fatalf("%d refusal lines, want 2: %s", n, logs.String())
			}
			w := dialWire(t, s.Addr())
			w.auth(token(t, 42, "phone", time.Hour), "phone")
			if got, want := sessionPeer(t, s, 42), netip.MustParseAddrPort(w.c.LocalAddr().String()); got != want {
				t.Fatalf("gateway sees %v, want the socket's %v", got, want)
			}
		})
	}
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProxyProtocolFlapLine(t *testing.T) {
	logs := &testutil.SyncBuffer{}
	s := startServer(t, func(c *Config) {
		c.ProxyProtocolFrom = loopbackNets
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		c.ConnAdmission.FlapMax, c.ConnAdmission.FlapWindow = 1, time.Minute
	})
	src := netip.MustParseAddrPort("198.51.100.9:40009")
	for range 2 {
		w := dialWire(t, s.Addr())
		w.send(encodeProxyV2(src, netip.MustParseAddrPort(s.Addr()), nil))
		w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 9, "phone", time.Hour), Device: "phone"})
		_, _ = w.next(2 * time.Second)
	}
	checkFor(t, 2*time.Second, func() error {
		if !strings.Contains(logs.String(), "flapping") || !strings.Contains(logs.String(), "remote="+src.String()) {
			return errorf("no flapping line with remote=%v in %q", src, logs.String())
		}
		return nil
	})
}

// An encrypted connection behind a balancer: the PROXY header comes before
// HELLO, and the policy still applies to what follows it.
func TestProxyProtocolEncrypted(t *testing.T) {
	s, n := secureServer(t, EncryptionRequired, func(c *Config) { c.ProxyProtocolFrom = loopbackNets })
	dst := netip.MustParseAddrPort(s.Addr())
	src := netip.MustParseAddrPort("198.51.100.20:40020")

	w := &swire{wire: dialWire(t, s.Addr())}
	hs, hello := helloFrame(t, testServerKey, token(t, 77, "phone", time.Hour), "phone")
	w.send(append(encodeProxyV2(src, dst, nil), hello...)) // one segment: header and HELLO together
	f := w.expect(codec.CmdHelloOK, 2*time.Second)
	payload, st, err := hs.Finish(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	if inner, _, err := codec.Split(payload, codec.MaxBodyLimit); err != nil || inner.Cmd != codec.CmdAuthOK {
		t.Fatalf("HELLO_OK carries %v %v", inner.Cmd, err)
	}
	w.st, w.raw, w.wire.rd = st, w.wire.rd, nil
	if r := w.call(1, "count", nil); string(r.Body) != "counted" || n.Load() != 1 {
		t.Fatalf("call = %q, handler ran %d times", r.Body, n.Load())
	}
	if got := sessionPeer(t, s, 77); got != src {
		t.Fatalf("gateway sees %v, want %v", got, src)
	}

	// Plaintext AUTH after a header is still refused under "required".
	p := dialWire(t, s.Addr())
	p.send(encodeProxyV1(src, dst))
	p.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 78, "phone", time.Hour)})
	p.expectClose(codec.CodeEncRequired, 2*time.Second)
}
