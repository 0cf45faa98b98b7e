package gateway

// Tests for the hostile-input failures of issue 16, items 8-12: each one
// reproduces what a client written from docs/protocol.md saw go wrong.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
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
