package gateway

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

func TestConnectionCapRefusesWithJitteredBusy(t *testing.T) {
	s := startServer(t, func(c *Config) { c.ConnAdmission = ConnAdmissionConfig{MaxConns: 3} })
	for i := 0; i < 3; i++ {
		w := dialWire(t, s.Addr())
		w.auth(token(t, uint64(i+1), "", time.Hour), "d")
	}
	hints := map[uint32]bool{}
	for i := 0; i < 5; i++ {
		w := dialWire(t, s.Addr())
		f := w.expect(codec.CmdError, 2*time.Second)
		var e pb.Error
		_ = proto.Unmarshal(f.Body, &e)
		if codec.Code(e.Code) != codec.CodeServerBusy || e.RetryAfterMs < 2000 || e.RetryAfterMs > 4000 {
			t.Fatalf("refusal: %v", &e)
		}
		hints[e.RetryAfterMs] = true
	}
	if len(hints) < 2 {
		t.Fatalf("retry hints not jittered: %v", hints)
	}
}

func TestAcceptRateLimit(t *testing.T) {
	s := startServer(t, func(c *Config) { c.ConnAdmission = ConnAdmissionConfig{AcceptRate: 5} })
	refused := 0
	for i := 0; i < 20; i++ {
		w := dialWire(t, s.Addr())
		w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, uint64(i+1), "", time.Hour), Device: "d"})
		f, err := w.next(2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if f.Cmd == codec.CmdError {
			refused++
		}
	}
	if refused < 10 {
		t.Fatalf("only %d of 20 back-to-back connections refused at 5/s", refused)
	}
}

func TestFlappingClientRefused(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.ConnAdmission = ConnAdmissionConfig{FlapWindow: time.Minute, FlapMax: 3, FlapBan: 30 * time.Second}
	})
	for i := 0; i < 3; i++ {
		w := dialWire(t, s.Addr())
		w.auth(token(t, 77, "", time.Hour), "phone")
		w.c.Close()
	}
	w := dialWire(t, s.Addr())
	w.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 77, "", time.Hour), Device: "phone"})
	f := w.expect(codec.CmdError, 2*time.Second)
	var e pb.Error
	_ = proto.Unmarshal(f.Body, &e)
	if codec.Code(e.Code) != codec.CodeServerBusy || e.RetryAfterMs < 30000 {
		t.Fatalf("flapping client: %v", &e)
	}
	if _, err := w.next(time.Second); err == nil {
		t.Fatal("a second ERROR or frame after the refusal")
	}
	// Other users are not affected.
	other := dialWire(t, s.Addr())
	other.auth(token(t, 78, "", time.Hour), "phone")
}
