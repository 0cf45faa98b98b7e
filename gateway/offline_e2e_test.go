package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/offline"
	"github.com/longlink/longlink/offline/apns"
	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/offline/standin"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// offlineRig is a gateway and its hub (embedded NATS with JetStream,
// router) with offline push as `longlink gateway` runs it: enqueuer on the
// router, sender beside it, device.register served by the worker, APNs
// behind a stand-in.
type offlineRig struct {
	hub  *push.Hub
	devs *offline.Devices
	on   *offline.Online
	srv  *standin.Server
	s    *Server
	ctx  context.Context
}

func newOfflineRig(t *testing.T, delay time.Duration, mod func(*Config)) *offlineRig {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", PushTokens: []string{"tok"},
		JetStreamDir: t.TempDir(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)

	onc, err := push.Connect(hub.NATSURL(), "offline", quiet, hub.Auth(push.RoleOffline))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(onc.Close)
	js, _ := jetstream.New(onc)
	devs, err := offline.OpenDevices(ctx, js, 1, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(devs.Close)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := standin.APNs(&k.PublicKey, "KEYID00001", "TEAM000001", "com.example.app")
	t.Cleanup(srv.Close)
	ac, err := apns.New(apns.Config{Key: k, KeyID: "KEYID00001", TeamID: "TEAM000001", Topic: "com.example.app", Endpoint: srv.URL, HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	on := offline.NewOnline(0, delay+time.Second) // as `longlink gateway` has it
	snd, err := offline.NewSender(ctx, offline.SenderConfig{JS: js, Devices: devs, Presence: hub.Router().Devices,
		Clients: []provider.Client{ac}, Delay: delay, Budget: time.Minute, Online: on, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(snd.Close)
	enq := offline.NewEnqueuer(offline.EnqueuerConfig{JS: js, Devices: devs, Delay: delay, Online: on, Logger: quiet})
	hub.Router().SetOffline(enq)
	t.Cleanup(func() { hub.Router().SetOffline(nil); enq.Close() })

	gnc, err := push.Connect(hub.NATSURL(), "devices", quiet, hub.Auth(push.RoleGateway))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gnc.Close)
	s := startServer(t, func(c *Config) {
		c.NATS, c.NATSOptions = hub.NATSURL(), []nats.Option{hub.Auth(push.RoleGateway)}
		c.Node = "e2e-node"
		c.Backend = &offline.Backend{Backend: backend.NewEmbedded(), W: offline.NewWriter(gnc)}
		c.PushLost = true
		if mod != nil {
			mod(c)
		}
	})
	return &offlineRig{hub: hub, devs: devs, on: on, srv: srv, s: s, ctx: ctx}
}

// TestOfflineE2E: a gateway and its hub (embedded NATS with JetStream,
// router) with offline push as `longlink gateway` runs it (enqueuer on the
// router, sender beside it, device.register served by the worker), APNs
// behind a stand-in. User 21 has two devices, both registered; the phone
// stays connected, the pad leaves. 100 rapid notifies reach the phone by
// PUSH and the pad by exactly one APNs request (the newest version); then
// the pad reconnects within the delay and gets a PUSH and no request.
func TestOfflineE2E(t *testing.T) {
	const delay = 1500 * time.Millisecond
	rig := newOfflineRig(t, delay, nil)
	hub, devs, srv, s, ctx := rig.hub, rig.devs, rig.srv, rig.s, rig.ctx
	phone, pad := dialWire(t, s.Addr()), dialWire(t, s.Addr())
	phone.auth(token(t, 21, "", time.Hour), "phone")
	pad.auth(token(t, 21, "", time.Hour), "pad")
	tokens := map[string]string{"phone": strings.Repeat("ab", 32), "pad": strings.Repeat("cd", 32)}
	for i, w := range []*wire{phone, pad} {
		dev := []string{"phone", "pad"}[i]
		body, _ := json.Marshal(offline.RegisterRequest{Platform: "apns", Token: tokens[dev]})
		if r := w.call(uint16(i+1), offline.MethodRegister, body); r.Code != 0 {
			t.Fatalf("device.register: %d %s", r.Code, r.Message)
		}
	}
	checkFor(t, 5*time.Second, func() error {
		if devs.Len() != 2 {
			return fmt.Errorf("%d registrations", devs.Len())
		}
		return nil
	})
	_ = pad.c.Close()
	checkFor(t, 5*time.Second, func() error {
		d, err := hub.Router().Devices(ctx, 21)
		if err != nil || len(d) != 1 {
			return fmt.Errorf("devices %v %v", d, err)
		}
		return nil
	})

	for v := uint64(1); v <= 100; v++ {
		if _, err := hub.Router().Notify(21, "", 4, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The phone: by PUSH, up to the newest version (coalesced by the window).
	deadline := time.Now().Add(5 * time.Second)
	for last := uint64(0); last < 100; {
		if time.Now().After(deadline) {
			t.Fatalf("phone reached version %d", last)
		}
		p := phone.expectPush(5 * time.Second)
		last = p.Version
	}
	// The pad: exactly one APNs request, for version 100.
	checkFor(t, 10*time.Second, func() error {
		if n := srv.Count(tokens["pad"]); n != 1 {
			return fmt.Errorf("%d requests for the pad", n)
		}
		return nil
	})
	time.Sleep(delay) // nothing more comes
	reqs := srv.Requests()
	if len(reqs) != 1 || reqs[0].Token != tokens["pad"] || !strings.Contains(string(reqs[0].Body), `"v":"100"`) {
		t.Fatalf("provider requests: %d %+v", len(reqs), reqs)
	}

	// The pad back within the delay: a PUSH over the long connection, no request.
	if _, err := hub.Router().Notify(21, "", 4, 101, nil); err != nil {
		t.Fatal(err)
	}
	pad = dialWire(t, s.Addr())
	pad.auth(token(t, 21, "", time.Hour), "pad")
	if p := pad.expectPush(3 * time.Second); p.Type != 4 || p.Version != 101 {
		t.Fatalf("pad push: %v", p)
	}
	time.Sleep(delay + time.Second)
	if n := len(srv.Requests()); n != 1 {
		t.Fatalf("the pad came back within the delay, yet %d provider requests", n)
	}

	// Both connected, so the sender's device query filled the online
	// cache: the next notify is not queued. The pad leaves right after it
	// (its presence delta reaches the router's hook): queued after all,
	// one request for the pad.
	checkFor(t, 5*time.Second, func() error {
		if rig.on.Len() != 1 {
			return fmt.Errorf("online cache: %d users", rig.on.Len())
		}
		return nil
	})
	if _, err := hub.Router().Notify(21, "", 4, 102, nil); err != nil {
		t.Fatal(err)
	}
	pad.expectPush(3 * time.Second)
	phone.expectPush(3 * time.Second)
	_ = pad.c.Close()
	checkFor(t, 10*time.Second, func() error {
		if n := srv.Count(tokens["pad"]); n != 2 {
			return fmt.Errorf("%d requests for the pad", n)
		}
		return nil
	})
	time.Sleep(delay)
	if reqs := srv.Requests(); len(reqs) != 2 || !strings.Contains(string(reqs[1].Body), `"v":"102"`) {
		t.Fatalf("provider requests: %d %+v", len(reqs), reqs)
	}
	_ = pb.Push{}
}

// register registers an APNs token for w's connection.
func (rig *offlineRig) register(t *testing.T, w *wire, seq uint16, tok string) {
	t.Helper()
	body, _ := json.Marshal(offline.RegisterRequest{Platform: "apns", Token: tok})
	if r := w.call(seq, offline.MethodRegister, body); r.Code != 0 {
		t.Fatalf("device.register: %d %s", r.Code, r.Message)
	}
}

// dialStuck connects with a tiny receive buffer: once the client stops
// reading, what the gateway writes stays unacknowledged on its side (a dead
// link, as far as the server's TCP can tell).
func dialStuck(t *testing.T, addr string) *wire {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &wire{t: t, c: c}
}

// TestOfflineLostPush: a registered device whose connection dies with
// notifies it never received gets them by its platform's push service.
// The pad stops reading (its link is dead as far as TCP can tell) while 30
// notifies of one type are written to it; at the delay's end it is still
// connected, so the queued notify is cancelled. Then it goes stale and is
// closed with those PUSH frames unacknowledged: exactly one APNs request,
// for the newest version, to the pad. Again, but the pad reconnects within
// the delay of that close: no request (it syncs on connect). Last, a pad
// that read every PUSH and closes: no request.
func TestOfflineLostPush(t *testing.T) {
	const delay = time.Second
	idle := heartbeat.Policy{Min: time.Second, Max: 2 * time.Second, Idle: 4 * time.Second}
	rig := newOfflineRig(t, delay, func(c *Config) {
		c.Policies = &heartbeat.Policies{Unknown: idle, WiFi: idle, Cellular: idle}
	})
	padTok := strings.Repeat("cd", 32)
	payload := []byte(strings.Repeat("x", 1000))
	// stuckPad connects the pad, registers it, and writes 30 notifies of
	// type typ to it without it reading; it returns when the gateway has
	// closed the pad as stale.
	stuckPad := func(typ uint32) {
		base := rig.srv.Count(padTok)
		pad := dialStuck(t, rig.s.Addr())
		pad.auth(token(t, 22, "", time.Hour), "pad")
		rig.register(t, pad, 1, padTok)
		checkFor(t, 5*time.Second, func() error {
			if rig.devs.Len() != 1 {
				return fmt.Errorf("%d registrations", rig.devs.Len())
			}
			return nil
		})
		for v := uint64(1); v <= 30; v++ {
			if _, err := rig.hub.Router().Notify(22, "", typ, v, payload); err != nil {
				t.Fatal(err)
			}
			time.Sleep(30 * time.Millisecond) // one window each: 30 PUSH frames of 1 KB
		}
		time.Sleep(delay + 500*time.Millisecond)
		if n := rig.srv.Count(padTok) - base; n != 0 { // connected at the delay's end: cancelled
			t.Fatalf("%d requests while the pad was connected", n)
		}
		checkFor(t, 10*time.Second, func() error { // idle timeout, then the close
			if d, err := rig.hub.Router().Devices(rig.ctx, 22); err != nil || len(d) != 0 {
				return fmt.Errorf("devices %v %v", d, err)
			}
			return nil
		})
	}

	stuckPad(7)
	checkFor(t, 10*time.Second, func() error {
		if n := rig.srv.Count(padTok); n != 1 {
			return fmt.Errorf("%d requests for the pad", n)
		}
		return nil
	})
	time.Sleep(delay) // nothing more comes
	reqs := rig.srv.Requests()
	if len(reqs) != 1 || !strings.Contains(string(reqs[0].Body), `"v":"30"`) || !strings.Contains(string(reqs[0].Body), `"t":"7"`) {
		t.Fatalf("provider requests: %d %+v", len(reqs), reqs)
	}

	// Back within the delay of the close: nothing sent.
	stuckPad(8)
	pad := dialWire(t, rig.s.Addr())
	pad.auth(token(t, 22, "", time.Hour), "pad")
	time.Sleep(2*delay + 500*time.Millisecond)
	if n := len(rig.srv.Requests()); n != 1 {
		t.Fatalf("the pad came back within the delay, yet %d provider requests", n)
	}

	// A pad that read everything and leaves cleanly: nothing to report.
	_ = pad.c.Close()
	pad = dialWire(t, rig.s.Addr())
	pad.auth(token(t, 22, "", time.Hour), "pad")
	for v := uint64(1); v <= 30; v++ {
		if _, err := rig.hub.Router().Notify(22, "", 9, v, payload); err != nil {
			t.Fatal(err)
		}
	}
	for last := uint64(0); last < 30; {
		last = pad.expectPush(5 * time.Second).Version
	}
	time.Sleep(delay + 500*time.Millisecond)
	_ = pad.c.Close()
	time.Sleep(2*delay + 500*time.Millisecond)
	if n := len(rig.srv.Requests()); n != 1 {
		t.Fatalf("a pad that received everything left, yet %d provider requests", n)
	}
}
