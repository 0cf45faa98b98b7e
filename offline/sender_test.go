package offline

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/offline/standin"
	"github.com/longlink/longlink/push"
)

type nextBackend struct{ backend.Backend }

func (nextBackend) Call(context.Context, *backend.Request) ([]byte, error) {
	return []byte("next"), nil
}

// offlineEnv is the offline path on a real NATS: the registrations bucket
// written through the gateway role, the enqueuer and a sender with the
// offline role, APNs behind a stand-in.
type offlineEnv struct {
	nats *natsEnv
	be   *Backend
	devs *Devices
	enq  *Enqueuer
	snd  *Sender
	srv  *standin.Server
	pres *presence
	js   jetstream.JetStream
}

func newOfflineEnv(t testing.TB, tweak func(*SenderConfig)) *offlineEnv {
	t.Helper()
	e := &offlineEnv{nats: startNATS(t, t.TempDir()), pres: &presence{}}
	e.js = e.nats.js(t, push.RoleOffline)
	ctx := ctxT(t, 20*time.Second)
	var err error
	if e.devs, err = OpenDevices(ctx, e.js, 1, quiet); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.devs.Close)
	e.be = &Backend{Backend: nextBackend{}, W: NewWriter(e.nats.conn(t, push.RoleGateway))}
	var c provider.Client
	e.srv, c = apnsEnv(t)
	cfg := SenderConfig{JS: e.js, Devices: e.devs, Presence: e.pres.Devices, Clients: []provider.Client{c},
		Delay: 200 * time.Millisecond, Budget: 30 * time.Second, RetryBase: 50 * time.Millisecond, PauseRetry: 100 * time.Millisecond,
		RequestTimeout: 300 * time.Millisecond, Logger: quiet}
	if tweak != nil {
		tweak(&cfg)
	}
	if e.snd, err = NewSender(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.snd.Close)
	e.enq = NewEnqueuer(EnqueuerConfig{JS: e.js, Devices: e.devs, Delay: cfg.Delay, Budget: cfg.Budget, Online: cfg.Online, Logger: quiet})
	t.Cleanup(e.enq.Close)
	return e
}

func (e *offlineEnv) register(t testing.TB, uid uint64, device, token string) {
	t.Helper()
	body, _ := json.Marshal(RegisterRequest{Platform: "apns", Token: token})
	if _, err := e.be.Call(ctxT(t, 5*time.Second), &backend.Request{UID: uid, Device: device, Method: MethodRegister, Body: body}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the mirror to see the registration", func() bool {
		for _, d := range e.devs.Get(uid) {
			if d.Device == device && d.Reg.Token == token {
				return true
			}
		}
		return false
	})
}

func TestRegistration(t *testing.T) {
	e := newOfflineEnv(t, nil)
	ctx := ctxT(t, 20*time.Second)
	e.register(t, 7, "phone", apnsToken(7, 1))
	e.register(t, 7, "phone", apnsToken(7, 2)) // replaced, not added
	e.register(t, 7, "pad", apnsToken(7, 3))
	if got := e.devs.Get(7); len(got) != 2 || e.devs.Len() != 2 {
		t.Fatalf("devices: %+v", got)
	}
	for _, body := range []string{`nope`, `{"platform":"sms","token":"x"}`, `{"platform":"apns","token":"zz"}`, `{"platform":"fcm"}`, `{"platform":"fcm","token":"t","ttl":99999999999}`} {
		_, err := e.be.Call(ctx, &backend.Request{UID: 7, Device: "phone", Method: MethodRegister, Body: []byte(body)})
		if k, _ := backend.Classify(err); k != backend.KindLogical {
			t.Errorf("%s: want a logical error, got %v", body, err)
		}
	}
	if out, _ := e.be.Call(ctx, &backend.Request{UID: 7, Method: "msg.send"}); string(out) != "next" {
		t.Fatal("other methods must reach the logic")
	}
	if _, err := e.be.Call(ctx, &backend.Request{UID: 7, Device: "pad", Method: MethodUnregister}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "unregister", func() bool { return len(e.devs.Get(7)) == 1 })
	// The gateway role writes registrations but cannot read them.
	gnc := e.nats.conn(t, push.RoleGateway)
	if _, err := gnc.Request("$JS.API.DIRECT.GET."+"KV_"+push.DeviceBucket+".$KV."+push.DeviceBucket+"."+Key(7, "phone"), nil, 500*time.Millisecond); err == nil {
		t.Fatal("the gateway role read a device token")
	}
}

func TestCollapseAndCancel(t *testing.T) {
	e := newOfflineEnv(t, nil)
	e.register(t, 9, "phone", apnsToken(9, 1))
	e.register(t, 9, "pad", apnsToken(9, 2))
	e.pres.set(9, "pad") // the pad is connected: it got the notify by PUSH
	for v := uint64(1); v <= 100; v++ {
		e.enq.Notified(9, "", 1, v, nil, true)
	}
	waitFor(t, 10*time.Second, "the phone's notification", func() bool { return e.srv.Count(apnsToken(9, 1)) >= 1 })
	time.Sleep(600 * time.Millisecond) // anything else would have come by now
	reqs := e.srv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d provider requests for 100 notifies, want 1", len(reqs))
	}
	if !strings.Contains(string(reqs[0].Body), `"v":"100"`) || reqs[0].Header.Get("apns-collapse-id") != "ll-1" {
		t.Fatalf("want the newest version with its collapse id: %s %v", reqs[0].Body, reqs[0].Header)
	}
	if n := testutil.ToFloat64(e.snd.m.cancelled.WithLabelValues("apns")); n != 1 {
		t.Fatalf("cancelled = %v, want 1 (the pad)", n)
	}
	if n := testutil.ToFloat64(e.enq.collapsed); n < 90 {
		t.Fatalf("collapsed = %v", n)
	}
	// The phone comes back within the delay: no provider request.
	e.pres.set(9, "pad", "phone")
	e.enq.Notified(9, "", 1, 101, nil, true)
	time.Sleep(800 * time.Millisecond)
	if n := len(e.srv.Requests()); n != 1 {
		t.Fatalf("a device back within the delay was notified (%d requests)", n)
	}
}

func TestProviderFaults(t *testing.T) {
	e := newOfflineEnv(t, func(c *SenderConfig) { c.MaxAttempts = 4 })
	type fc struct {
		dev   string
		fault func(n int) standin.Fault
	}
	cases := []fc{
		{"gone", func(int) standin.Fault { return standin.Fault{Status: 410, Reason: "Unregistered"} }},
		{"bad", func(int) standin.Fault { return standin.Fault{Status: 400, Reason: "BadDeviceToken"} }},
		{"throttled", func(n int) standin.Fault {
			if n == 0 {
				return standin.Fault{Status: 429, Reason: "TooManyRequests"}
			}
			return standin.Fault{}
		}},
		{"flaky", func(n int) standin.Fault {
			if n < 2 {
				return standin.Fault{Status: 500, Reason: "InternalServerError"}
			}
			return standin.Fault{}
		}},
		{"hang", func(n int) standin.Fault {
			if n == 0 {
				return standin.Fault{Hang: true}
			}
			return standin.Fault{}
		}},
		{"down", func(int) standin.Fault { return standin.Fault{Status: 503, Reason: "ServiceUnavailable"} }},
	}
	byToken := map[string]func(int) standin.Fault{}
	for i, c := range cases {
		tok := apnsToken(uint64(100+i), 1)
		byToken[tok] = c.fault
		e.register(t, uint64(100+i), c.dev, tok)
	}
	e.srv.SetFault(func(tok string, n int) standin.Fault { return byToken[tok](n) })
	for i := range cases {
		e.enq.Notified(uint64(100+i), "", 2, 1, nil, false)
	}
	tok := func(i int) string { return apnsToken(uint64(100+i), 1) }
	waitFor(t, 20*time.Second, "recoveries", func() bool {
		return e.srv.Count(tok(2)) == 1 && e.srv.Count(tok(3)) == 1 && e.srv.Count(tok(4)) == 1
	})
	waitFor(t, 20*time.Second, "the queue to drain", func() bool {
		ci, err := e.snd.cons.Info(ctxT(t, time.Second))
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	})
	count := func(tk string) int {
		n := 0
		for _, r := range e.srv.Requests() {
			if r.Token == tk {
				n++
			}
		}
		return n
	}
	// 410 and BadDeviceToken: one request, then the registration is gone.
	for _, i := range []int{0, 1} {
		if count(tok(i)) != 1 || len(e.devs.Get(uint64(100+i))) != 0 {
			t.Errorf("%s: %d requests, registration %v", cases[i].dev, count(tok(i)), e.devs.Get(uint64(100+i)))
		}
	}
	// Always 503: MaxAttempts requests, then given up (not retried forever).
	if n := count(tok(5)); n != 4 {
		t.Errorf("down: %d requests, want MaxAttempts = 4", n)
	}
	if n := testutil.ToFloat64(e.snd.m.failed.WithLabelValues("apns", "gave_up_ServiceUnavailable")); n != 1 {
		t.Errorf("gave_up = %v", n)
	}
	if n := testutil.ToFloat64(e.snd.m.deletions.WithLabelValues("apns", "invalid")); n != 2 {
		t.Errorf("token deletions = %v", n)
	}
	for i := 2; i <= 4; i++ { // recovered once, and exactly once
		if e.srv.Count(tok(i)) != 1 {
			t.Errorf("%s: %d successes", cases[i].dev, e.srv.Count(tok(i)))
		}
	}
}

func TestSwitches(t *testing.T) {
	e := newOfflineEnv(t, nil)
	ctx := ctxT(t, 20*time.Second)
	e.register(t, 5, "phone", apnsToken(5, 1))
	if _, err := SetSwitches(ctx, e.js, 1, Switches{Paused: []string{"apns"}, By: "test", Reason: "incident"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the pause", func() bool { return e.snd.Switches().IsPaused("apns") })
	e.enq.Notified(5, "", 1, 1, nil, false)
	time.Sleep(700 * time.Millisecond)
	if n := len(e.srv.Requests()); n != 0 {
		t.Fatalf("paused provider sent %d", n)
	}
	if _, err := SetSwitches(ctx, e.js, 1, Switches{By: "test"}); err != nil { // resume: the held notify goes out
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the held notify after resume", func() bool { return e.srv.Count(apnsToken(5, 1)) == 1 })
	if _, err := SetSwitches(ctx, e.js, 1, Switches{Off: true, By: "test", Reason: "kill"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the kill switch", func() bool { return e.snd.Switches().Off })
	e.enq.Notified(5, "", 1, 2, nil, false)
	waitFor(t, 5*time.Second, "the drop", func() bool {
		return testutil.ToFloat64(e.snd.m.dropped.WithLabelValues("kill_switch")) == 1
	})
	if n := len(e.srv.Requests()); n != 1 {
		t.Fatalf("kill switch on, yet %d requests", n)
	}
}

// TestOfflineRoleLeastPrivilege: the offline role does its work (the
// tests above) and nothing else: no stream deletion or purge, no push.
func TestOfflineRoleLeastPrivilege(t *testing.T) {
	e := newOfflineEnv(t, nil)
	denied := func() context.Context { return ctxT(t, 500*time.Millisecond) } // a refused request is never answered
	if err := e.js.DeleteStream(denied(), push.OfflineStream); err == nil {
		t.Fatal("the offline role deleted its queue")
	}
	if err := e.js.DeleteStream(denied(), "KV_"+push.DeviceBucket); err == nil {
		t.Fatal("the offline role deleted the registrations")
	}
	if s, err := e.js.Stream(ctxT(t, 5*time.Second), push.OfflineStream); err != nil {
		t.Fatal(err)
	} else if err := s.Purge(denied()); err == nil {
		t.Fatal("the offline role purged its queue")
	}
	nc := e.nats.conn(t, push.RoleOffline)
	if _, err := nc.Request(push.SubjectNotify, []byte{}, 300*time.Millisecond); err == nil {
		t.Fatal("the offline role reached the push ingress")
	}
}

// TestExpiredRegistration: an expired registration is not notified, and
// it is deleted.
func TestExpiredRegistration(t *testing.T) {
	e := newOfflineEnv(t, nil)
	ctx := ctxT(t, 10*time.Second)
	r := Registration{Platform: "apns", Token: apnsToken(3, 1), Registered: time.Now().Add(-2 * time.Hour).Unix(), Expires: time.Now().Add(-time.Hour).Unix()}
	if err := e.be.W.Put(ctx, 3, "phone", r); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the mirror", func() bool { return e.devs.Has(3) })
	e.enq.Notified(3, "", 1, 1, nil, false)
	waitFor(t, 5*time.Second, "the deletion", func() bool { return !e.devs.Has(3) })
	if n := len(e.srv.Requests()); n != 0 {
		t.Fatalf("%d requests to an expired registration", n)
	}
	if n := testutil.ToFloat64(e.snd.m.deletions.WithLabelValues("apns", "expired")); n != 1 {
		t.Fatalf("deletions{expired} = %v", n)
	}
}
