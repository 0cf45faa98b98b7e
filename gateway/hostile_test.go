package gateway

// Tests for the hostile-input failures of issue 16, items 8-12: each one
// reproduces what a client written from docs/protocol.md saw go wrong.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// rawRequest encodes a Request by hand, so the method may be any bytes
// (proto.Marshal refuses non-UTF-8 strings).
func rawRequest(method []byte, body []byte) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, method)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendBytes(b, body)
}

func (w *wire) callRaw(seq uint16, method []byte) codec.Code {
	w.t.Helper()
	w.send(codec.AppendFrame(nil, codec.CmdRequest, 0, seq, rawRequest(method, nil)))
	return w.respCode(seq)
}

func (w *wire) respCode(seq uint16) codec.Code {
	w.t.Helper()
	f := w.expect(codec.CmdResponse, 5*time.Second)
	if f.Seq != seq {
		w.t.Fatalf("response seq %d, want %d", f.Seq, seq)
	}
	code, _ := responseCode(f.Body)
	return code
}

// responseCode reads Response.code (field 1) by hand.
func responseCode(b []byte) (codec.Code, bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, _ := protowire.ConsumeVarint(b)
			return codec.Code(v), true
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return 0, false
		}
		b = b[n:]
	}
	return 0, true
}

// methodLabels returns the distinct method label values of the per-method
// series.
func methodLabels(t *testing.T, s *Server) map[string]bool {
	t.Helper()
	fams, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]bool{}
	for _, f := range fams {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "method" {
					labels[l.GetValue()] = true
				}
			}
		}
	}
	return labels
}

// Item 8: one user sending hundreds of junk method names must not turn real
// methods into "other" (refused 1001 for everyone), and no name may become
// an unbounded metrics label.
func TestJunkMethodsCannotDisableRealMethods(t *testing.T) {
	be := backend.NewEmbedded()
	be.Handle("late", func(_ context.Context, r *backend.Request) ([]byte, error) { return []byte(r.Method), nil })
	s := startServer(t, func(c *Config) { c.Backend = be; c.MaxFrameRate = 100000 })
	w := dialWire(t, s.Addr())
	w.auth(token(t, 1, "", time.Hour), "attacker")
	seq := uint16(0)
	for i := 0; i < maxMethodLabels+50; i++ {
		seq++
		if code := w.callRaw(seq, fmt.Appendf(nil, "junk-%d", i)); code != codec.CodeUnknownMethod {
			t.Fatalf("junk method %d: code %d, want 1001", i, code)
		}
	}
	// Another user's real method, first called after the junk, still works
	// and reaches the backend under its real name.
	v := dialWire(t, s.Addr())
	v.auth(token(t, 2, "", time.Hour), "victim")
	if r := v.call(1, "late", nil); r.Code != 0 || string(r.Body) != "late" {
		t.Fatalf("real method after junk: code %d body %q", r.Code, r.Body)
	}
	if r := v.call(2, "echo", []byte("hi")); r.Code != 0 || string(r.Body) != "hi" {
		t.Fatalf("echo after junk: %v", r)
	}
	// Bad names are the documented 1002, never a label.
	for _, bad := range [][]byte{{}, []byte(strings.Repeat("m", 60000)), {0xff, 0xfe, 'x'}, []byte(strings.Repeat("a", MaxMethodLen+1))} {
		seq++
		if code := w.callRaw(seq, bad); code != codec.CodeBadRequest {
			t.Fatalf("method of %d bytes: code %d, want 1002", len(bad), code)
		}
	}
	seq++
	if code := w.callRaw(seq, []byte(strings.Repeat("a", MaxMethodLen))); code != codec.CodeUnknownMethod {
		t.Fatalf("method of %d bytes: code %d, want 1001 (accepted, unknown)", MaxMethodLen, code)
	}
	labels := methodLabels(t, s)
	if len(labels) > maxMethodLabels+1 {
		t.Fatalf("%d method labels, bound is %d + other", len(labels), maxMethodLabels)
	}
	for l := range labels {
		if len(l) > MaxMethodLen || strings.HasPrefix(l, "junk-") {
			t.Fatalf("label %.40q... (%d bytes) should not exist", l, len(l))
		}
	}
	if !labels["late"] || !labels["echo"] || !labels[otherLabel] {
		t.Fatalf("labels %v: want late, echo and other", labels)
	}
	// Junk does not stay interned either.
	s.fwd.methodsMu.RLock()
	n := len(s.fwd.methods)
	s.fwd.methodsMu.RUnlock()
	if n > 20 {
		t.Fatalf("%d interned method names after junk", n)
	}
}

// rawHTTP writes req on a fresh connection and returns what the server
// answered within timeout (possibly nothing).
func rawHTTP(t *testing.T, addr, req string, timeout time.Duration) string {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(timeout))
	b, _ := io.ReadAll(nc)
	return string(b)
}

// Item 11: HTTP limits and rules agree with the docs and with TCP.
func TestHTTPLimitsAndDeviceBinding(t *testing.T) {
	s, addr := startHTTP(t, nil, HTTPConfig{})
	_ = s
	tok := token(t, 42, "", time.Hour)
	// A 10 GB Content-Length with no body behind it: 413 at once.
	start := time.Now()
	got := rawHTTP(t, addr, "POST /v1/call/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tok+
		"\r\nContent-Length: 10000000000\r\n\r\n", 3*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.1 413") || time.Since(start) > 2*time.Second {
		t.Errorf("10 GB Content-Length: after %v got %.60q", time.Since(start), got)
	}
	// Request line and headers: at most 8 KiB (docs/protocol.md).
	for _, tc := range []struct {
		pad    int
		status string
	}{{7000, "HTTP/1.1 200"}, {8300, "HTTP/1.1 431"}, {12000, "HTTP/1.1 431"}} {
		got := rawHTTP(t, addr, "POST /v1/call/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tok+
			"\r\nX-Pad: "+strings.Repeat("p", tc.pad)+"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", 3*time.Second)
		if !strings.HasPrefix(got, tc.status) {
			t.Errorf("headers with a %d-byte header: got %.40q, want %s", tc.pad, got, tc.status)
		}
	}
	base := "http://" + addr + "/v1/call/"
	call := func(method, tok, device string) (int, httpError, string) {
		req, _ := http.NewRequest(http.MethodPost, base+method, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		if device != "" {
			req.Header.Set("X-Longlink-Device", device)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e httpError
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, e, string(b)
	}
	// A device-bound token is refused for another device, as TCP AUTH does.
	bound := token(t, 43, "phone", time.Hour)
	if st, e, _ := call("whoami", bound, "tablet"); st != 401 || e.Code != codec.CodeBadToken {
		t.Errorf("bound token, other device: %d %v", st, e)
	}
	for _, dev := range []string{"", "phone"} {
		if st, _, body := call("whoami", bound, dev); st != 200 || body != "phone" {
			t.Errorf("bound token, device %q: %d %q", dev, st, body)
		}
	}
	// A 401 says nothing about which check failed.
	other, err := auth.NewKeySet(9, map[uint32][]byte{9: []byte("fedcba9876543210fedcba9876543210")})
	if err != nil {
		t.Fatal(err)
	}
	unknownKey, _ := other.Mint(42, "", time.Now().Add(time.Hour))
	forged := []byte(tok)
	forged[len(forged)-3] ^= 1
	_, _, b1 := call("echo", unknownKey, "")
	_, _, b2 := call("echo", string(forged), "")
	_, _, b3 := call("echo", "garbage", "")
	if b1 != b2 || b2 != b3 {
		t.Errorf("401 bodies differ by cause: %q / %q / %q", b1, b2, b3)
	}
	// An empty method is the documented 400/1002, as a JSON answer.
	if st, e, _ := call("", tok, ""); st != 400 || e.Code != codec.CodeBadRequest {
		t.Errorf("empty method: %d %v", st, e)
	}
}

// Item 9: a slow but steady upload is judged by its progress, not its age;
// a frame that trickles in below the minimum rate gets its own code.
func TestSlowFrameJudgedByProgress(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.FrameTimeout = 400 * time.Millisecond // windows of 400ms...
		c.MinFrameRate = 256                    // ...in which a frame must gain 102 bytes
	})
	body := make([]byte, 2000)
	frame := codec.AppendFrame(nil, codec.CmdRequest, 0, 1, rawRequest([]byte("echo"), body))

	steady := dialWire(t, s.Addr())
	steady.auth(token(t, 1, "", time.Hour), "steady")
	start := time.Now()
	for off := 0; off < len(frame); off += 100 { // ~1 KB/s: 2 s, five windows
		steady.send(frame[off:min(off+100, len(frame))])
		time.Sleep(100 * time.Millisecond)
	}
	if code := steady.respCode(1); code != codec.OK || time.Since(start) < 4*400*time.Millisecond {
		t.Fatalf("steady upload: code %d after %v", code, time.Since(start))
	}

	trickle := dialWire(t, s.Addr())
	trickle.auth(token(t, 2, "", time.Hour), "trickle")
	errc := make(chan error, 1)
	go func() { // 100 B/s, under the minimum
		for off := 0; off < len(frame); off += 10 {
			if _, err := trickle.c.Write(frame[off : off+10]); err != nil {
				errc <- err
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		errc <- nil
	}()
	trickle.expectClose(codec.CodeFrameTooSlow, 3*time.Second)
}

// Item 10: a slow consumer is told why it is closed: the ERROR 3003 comes
// after what was queued, then the close.
func TestSlowConsumerSeesError(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.MaxOutbound = 64 << 10
		c.MaxFrameRate = 1 << 20
		c.CloseLinger = 5 * time.Second
	})
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	w := &wire{t: t, c: nc}
	w.auth(token(t, 1, "", time.Hour), "slow")
	req := rawRequest([]byte("echo"), make([]byte, 32<<10))
	seq := uint16(0)
	for round := 0; round < 8; round++ { // ~8 MB of answers; the client reads none yet
		var b []byte
		for i := 0; i < 32; i++ {
			seq++
			b = codec.AppendFrame(b, codec.CmdRequest, 0, seq, req)
		}
		if _, err := nc.Write(b); err != nil {
			break // closed (without lingering, even reset): what was read will tell
		}
		time.Sleep(50 * time.Millisecond)
	}
	start, frames := time.Now(), 0
	for {
		f, err := w.next(10 * time.Second)
		if err != nil {
			t.Fatalf("connection ended (%v) without ERROR 3003 after %d frames, %v", err, frames, time.Since(start))
		}
		frames++
		if f.Cmd != codec.CmdError {
			continue
		}
		t.Logf("ERROR after %d frames, %v", frames, time.Since(start))
		w.rd = append(codec.AppendFrame(nil, f.Cmd, f.Flags, f.Seq, f.Body), w.rd...)
		w.expectClose(codec.CodeSlowConsumer, 10*time.Second)
		return
	}
}

// Item 12: AUTH corners. An over-long device id is a request to fix, not a
// bad token (4005, not 4001); an unknown network is clamped, not echoed.
func TestAuthCorners(t *testing.T) {
	s := startServer(t, nil)
	w := dialWire(t, s.Addr())
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 1, "", time.Hour), Device: strings.Repeat("d", auth.MaxDevice+1)})
	w.expectClose(codec.CodeBadAuth, 2*time.Second)

	w = dialWire(t, s.Addr())
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 1, "", time.Hour), Device: "d", Network: pb.Network(99)})
	f := w.expect(codec.CmdAuthOK, 2*time.Second)
	var ok pb.AuthOK
	if err := proto.Unmarshal(f.Body, &ok); err != nil {
		t.Fatal(err)
	}
	if ok.Heartbeat.GetNetwork() != pb.Network_NETWORK_UNKNOWN {
		t.Fatalf("network 99 echoed as %v", ok.Heartbeat.GetNetwork())
	}
	hb := ok.Heartbeat
	if hb.FirstIntervalS > hb.MinIntervalS || hb.FirstIntervalS < hb.MinIntervalS/2 {
		t.Fatalf("first_interval_s %d outside [min/2, min] = [%d, %d] (docs/protocol.md)", hb.FirstIntervalS, hb.MinIntervalS/2, hb.MinIntervalS)
	}
}

// Item 12: a client that half-closes right after its calls still gets
// every answer, then the close.
func TestHalfCloseGetsAnswers(t *testing.T) {
	be := slowEcho()
	s := startServer(t, func(c *Config) { c.Backend = be })
	for trial := 0; trial < 10; trial++ {
		w := dialWire(t, s.Addr())
		w.auth(token(t, uint64(trial+1), "", time.Hour), "d")
		var b []byte
		for seq := uint16(1); seq <= 3; seq++ {
			method := "echo"
			if seq == 2 {
				method = "slow"
			}
			b = codec.AppendFrame(b, codec.CmdRequest, 0, seq, rawRequest([]byte(method), []byte{byte(seq)}))
		}
		w.send(b)
		if err := w.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got := map[uint16]bool{}
		for len(got) < 3 {
			f, err := w.next(3 * time.Second)
			if err != nil {
				t.Fatalf("trial %d: answers %v, then %v", trial, got, err)
			}
			if f.Cmd == codec.CmdResponse {
				got[f.Seq] = true
			}
		}
		if _, err := w.next(3 * time.Second); err != io.EOF {
			t.Fatalf("trial %d: want EOF after the answers, got %v", trial, err)
		}
	}
	checkFor(t, 2*time.Second, func() error {
		if n := s.ConnCount(); n != 0 {
			return fmt.Errorf("%d connections left", n)
		}
		if n := orphanCount(s); n != 0 {
			return fmt.Errorf("%d kept sockets not released", n)
		}
		return nil
	})
}

// Item 12: while draining, the answer to AUTH is GOAWAY 3004 (documented:
// it may come as the first frame, instead of AUTH_OK).
func TestAuthWhileDrainingGetsGoAway(t *testing.T) {
	s := startServer(t, func(c *Config) { c.DrainWindow = 2 * time.Second })
	busy := dialWire(t, s.Addr()) // keeps the drain going
	busy.auth(token(t, 1, "", time.Hour), "d")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { _ = s.Shutdown(ctx) }()
	checkFor(t, 2*time.Second, func() error {
		if !s.draining.Load() {
			return fmt.Errorf("not draining yet")
		}
		return nil
	})
	w := dialWire(t, s.Addr())
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 2, "", time.Hour), Device: "d"})
	f := w.expect(codec.CmdGoAway, 2*time.Second)
	var g pb.GoAway
	if err := proto.Unmarshal(f.Body, &g); err != nil || codec.Code(g.Code) != codec.CodeShutdown {
		t.Fatalf("GOAWAY %v %v", &g, err)
	}
	if _, err := w.next(2 * time.Second); err != io.EOF {
		t.Fatalf("want EOF after GOAWAY, got %v", err)
	}
}

// Item 8 as reproduced: junk names over one HTTP keep-alive connection.
func TestJunkMethodsOverHTTP(t *testing.T) {
	_, addr := startHTTP(t, nil, HTTPConfig{})
	tok := token(t, 42, "", time.Hour)
	c := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < maxMethodLabels+10; i++ {
		resp, _ := post(t, c, fmt.Sprintf("http://%s/v1/call/junk-%d", addr, i), tok, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("junk %d: %v", i, resp.Status)
		}
	}
	if resp, body := post(t, c, "http://"+addr+"/v1/call/whoami", tok, nil); resp.StatusCode != 200 || string(body) != "curl" {
		t.Fatalf("real method after junk: %v %q", resp.Status, body)
	}
}

// Item 11: the 8 KiB header limit is the same over HTTP/2.
func TestHTTP2HeaderLimit(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	_, addr := startHTTP(t, nil, HTTPConfig{TLSCert: cert, TLSKey: key})
	pool := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(cert)
	pool.AppendCertsFromPEM(pemBytes)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	for _, tc := range []struct{ pad, status int }{{6000, 200}, {8300, 431}} {
		req, _ := http.NewRequest(http.MethodPost, "https://"+addr+"/v1/call/echo", strings.NewReader("h2"))
		req.Header.Set("Authorization", "Bearer "+token(t, 1, "", time.Hour))
		req.Header.Set("X-Pad", strings.Repeat("p", tc.pad))
		resp, err := c.Do(req)
		if err != nil {
			if tc.status == 431 && strings.Contains(err.Error(), "header list larger than peer's advertised limit") {
				continue // the server's SETTINGS already told the client: refused before sending
			}
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.ProtoMajor != 2 {
			t.Errorf("h2 with a %d-byte header: %s %s, want %d", tc.pad, resp.Proto, resp.Status, tc.status)
		}
	}
}

// orphanCount is how many sockets are kept for answers after a half-close.
func orphanCount(s *Server) int {
	n := 0
	s.orphans.Range(func(any, any) bool { n++; return true })
	return n
}

// Item 12: OPEN answers reach a half-closed client too, and the kept socket
// is released once the last call (OPEN or REQUEST) is answered.
func TestHalfCloseAnswersOpen(t *testing.T) {
	env := newShakeEnv(t, 1000)
	s := startServer(t, func(c *Config) { c.Shake = env.cfg; c.MaxFrameRate = 10000 })
	w := dialWire(t, s.Addr())
	w.auth(token(t, 7, "", time.Hour), "d")
	ticket := w.shakeTicket()
	w.sendFrame(codec.CmdOpen, 900, &pb.Open{Ticket: ticket})
	w.send(codec.AppendFrame(nil, codec.CmdRequest, 0, 901, rawRequest([]byte("echo"), []byte("x"))))
	if err := w.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got := map[codec.Cmd]bool{}
	for len(got) < 2 {
		f, err := w.next(5 * time.Second)
		if err != nil {
			t.Fatalf("got %v, then %v", got, err)
		}
		got[f.Cmd] = true
	}
	if !got[codec.CmdOpenRsp] || !got[codec.CmdResponse] {
		t.Fatalf("answers %v", got)
	}
	checkFor(t, 2*time.Second, func() error {
		if n := orphanCount(s); n != 0 {
			return fmt.Errorf("%d kept sockets not released", n)
		}
		return nil
	})
}
