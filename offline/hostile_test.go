package offline

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/backend"

	"github.com/longlink/longlink/push"
)

// TestGatewayCannotWipeRegistrations: the gateway role may publish
// registrations, but one publish with "Nats-Rollup: all" must not purge
// every user's (a KV stream allows rollups unless told otherwise). A bucket
// made by an older version (rollups allowed) is fixed when opened.
func TestGatewayCannotWipeRegistrations(t *testing.T) {
	env := startNATS(t, t.TempDir())
	ctx := ctxT(t, 20*time.Second)
	ojs := env.js(t, push.RoleOffline)
	if _, err := ojs.CreateKeyValue(ctx, BucketConfig(1)); err != nil { // as before the fix
		t.Fatal(err)
	}
	devs, err := OpenDevices(ctx, ojs, 1, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(devs.Close)
	w := NewWriter(env.conn(t, push.RoleGateway))
	for uid := uint64(1); uid <= 3; uid++ {
		if err := w.Put(ctx, uid, "phone", Registration{Platform: "fcm", Token: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "three registrations", func() bool { return devs.Len() == 3 })

	m := nats.NewMsg("$KV." + push.DeviceBucket + "." + Key(9, "x"))
	m.Header.Set("Nats-Rollup", "all")
	m.Data = []byte(`{"platform":"fcm","token":"t"}`)
	if err := w.publish(ctx, m); err == nil {
		t.Error("a rollup publish was accepted")
	}
	kv, err := ojs.KeyValue(ctx, push.DeviceBucket)
	if err != nil {
		t.Fatal(err)
	}
	for uid := uint64(1); uid <= 3; uid++ {
		if _, err := kv.Get(ctx, Key(uid, "phone")); err != nil {
			t.Errorf("user %d's registration after a gateway's rollup: %v", uid, err)
		}
	}
}

// TestRegisterTTLOverflow: a ttl whose nanoseconds wrap int64 into the
// allowed range (18446744074 s is 0.29 s mod 2^64 ns; 9223372037 s is
// negative) is refused, not
// stored as an already expired registration.
func TestRegisterTTLOverflow(t *testing.T) {
	e := newOfflineEnv(t, nil)
	ctx := ctxT(t, 10*time.Second)
	for _, ttl := range []string{"18446744074", "9223372037", "15552001"} {
		body := `{"platform":"fcm","token":"t","ttl":` + ttl + `}`
		_, err := e.be.Call(ctx, &backend.Request{UID: 7, Device: "phone", Method: MethodRegister, Body: []byte(body)})
		if k, _ := backend.Classify(err); k != backend.KindLogical {
			t.Errorf("ttl %s: want a logical error, got %v", ttl, err)
		}
	}
	if _, err := e.be.Call(ctx, &backend.Request{UID: 7, Device: "phone", Method: MethodRegister, Body: []byte(`{"platform":"fcm","token":"t","ttl":15552000}`)}); err != nil {
		t.Errorf("ttl at the 180-day limit: %v", err)
	}
}

// TestRegisterTopicCharacters: a topic is an apns-topic header value;
// control characters (a header injection, or a request the HTTP client
// refuses on every attempt) and spaces are refused at registration.
func TestRegisterTopicCharacters(t *testing.T) {
	tok := apnsToken(7, 1)
	for _, topic := range []string{"a\r\nX-Evil: 1", "com.example app", "com.example\x00", "com.\xffexample"} {
		r := Registration{Platform: "apns", Token: tok, Topic: topic}
		if r.Validate() == nil {
			t.Errorf("topic %q accepted", topic)
		}
	}
	for _, topic := range []string{"", "com.example.app", "com.example.app.voip", "com.example.app.push-type.liveactivity"} {
		r := Registration{Platform: "apns", Token: tok, Topic: topic}
		if err := r.Validate(); err != nil {
			t.Errorf("topic %q refused: %v", topic, err)
		}
	}
}
