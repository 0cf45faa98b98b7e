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

func TestFlapMapForgetsQuietUsers(t *testing.T) {
	a := newConnAdmission(ConnAdmissionConfig{FlapWindow: time.Minute, FlapMax: 2, FlapBan: 10 * time.Minute})
	t0 := time.Now()
	for uid := uint64(1); uid <= 100; uid++ {
		a.flapping(uid, t0, 0)
		a.closed(uid, t0) // each reconnects once: remembered for a window
		a.flapping(uid, t0, 0)
	}
	for i := 0; i < 2; i++ { // user 7 flaps and is banned
		a.flapping(7, t0, 0)
	}
	if _, banned := a.flapping(7, t0, 0); !banned {
		t.Fatal("user 7 not banned after 4 authentications in the window")
	}
	a.forget(t0.Add(2 * time.Minute))
	if n := len(a.flaps); n != 1 {
		t.Fatalf("%d users remembered after their window, want only the banned one", n)
	}
	if _, banned := a.flapping(7, t0.Add(3*time.Minute), 0); !banned {
		t.Fatal("ban forgotten")
	}
}

// Idle connections cost the flapping rule nothing: a user's first
// authentication leaves no entry (issue 19: flap tracking only for users
// who reconnect); a second device while the first is held is counted.
func TestFlapMapOnlyReconnects(t *testing.T) {
	a := newConnAdmission(ConnAdmissionConfig{FlapWindow: time.Minute, FlapMax: 2})
	t0 := time.Now()
	for uid := uint64(1); uid <= 1000; uid++ {
		if _, banned := a.flapping(uid, t0, 0); banned {
			t.Fatal("first authentication refused")
		}
	}
	if n := len(a.flaps); n != 0 {
		t.Fatalf("%d flapping entries for 1000 first connections, want 0", n)
	}
	// Held connections count: the third authentication with two held is one
	// too many for FlapMax 2.
	a.flapping(5, t0, 0)
	a.flapping(5, t0, 1)
	if _, banned := a.flapping(5, t0, 2); !banned {
		t.Fatal("three authentications with the others held: not refused")
	}
}
