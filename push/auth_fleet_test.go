package push_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/push"
)

// TestNATSFleetAndDevicePermissions: what the internet-facing gateway
// role, the router and the offline role must not do on the fleet and
// device subjects (docs/fleet.md "NATS permissions", docs/push.md).
func TestNATSFleetAndDevicePermissions(t *testing.T) {
	h, sec := authHub(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 700*time.Millisecond) }

	// The admin role sets up what a fleet has: the keys bucket, the device
	// bucket with one registration.
	ajs, _ := jetstream.New(connectAs(t, h, sec, push.RoleAdmin, nil))
	keys, err := ajs.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "LONGLINK_FLEET_KEYS", History: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Put(ctx, "fleet", []byte("genuine")); err != nil {
		t.Fatal(err)
	}
	devs, err := ajs.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: push.DeviceBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devs.Put(ctx, "7._", []byte(`{"platform":"fcm","token":"secret-token"}`)); err != nil {
		t.Fatal(err)
	}

	gv, rv, ov := &violations{}, &violations{}, &violations{}
	gw := connectAs(t, h, sec, push.RoleGateway, gv)
	rt := connectAs(t, h, sec, push.RoleRouter, rv)
	of := connectAs(t, h, sec, push.RoleOffline, ov)

	// Nobody but admin sends fleet admin requests or writes the keys.
	for _, nc := range []*nats.Conn{gw, rt, of} {
		_ = nc.Publish("longlink.fleet.admin.all", []byte(`{"cmd":"set"}`))
		_ = nc.Publish("longlink.fleet.admin.h1", []byte(`{"cmd":"set"}`))
		_ = nc.Publish("$KV.LONGLINK_FLEET_KEYS.fleet", []byte("forged"))
		js, _ := jetstream.New(nc)
		c, cc := short()
		if _, err := js.CreateOrUpdateKeyValue(c, jetstream.KeyValueConfig{Bucket: "LONGLINK_FLEET_KEYS", History: 1}); err == nil {
			t.Error("a non-admin role updated the keys bucket")
		}
		cc()
		_ = nc.FlushTimeout(2 * time.Second)
	}
	// The router reads the keys; the gateway (internet-facing) cannot.
	gjs, _ := jetstream.New(gw)
	c, cc := short()
	if kv, err := gjs.KeyValue(c, "LONGLINK_FLEET_KEYS"); err == nil {
		if _, err := kv.Get(c, "fleet"); err == nil {
			t.Error("the gateway role read the distributed keys")
		}
	}
	cc()
	rjs, _ := jetstream.New(rt)
	if kv, err := rjs.KeyValue(ctx, "LONGLINK_FLEET_KEYS"); err != nil {
		t.Errorf("router opens the keys bucket: %v", err)
	} else if e, err := kv.Get(ctx, "fleet"); err != nil || string(e.Value()) != "genuine" {
		t.Errorf("router reads the keys: %v", err)
	}
	// Neither the gateway nor the router reads device tokens: not by a
	// direct get, not by watching the bucket's subjects go by.
	for _, js := range []jetstream.JetStream{gjs, rjs} {
		c, cc := short()
		if kv, err := js.KeyValue(c, push.DeviceBucket); err == nil {
			if e, err := kv.Get(c, "7._"); err == nil {
				t.Errorf("a role read a device token: %q", e.Value())
			}
		}
		cc()
	}
	if _, err := gw.SubscribeSync("$KV." + push.DeviceBucket + ".>"); err == nil {
		_ = gw.FlushTimeout(2 * time.Second)
	}
	// (That a gateway cannot wipe the bucket with a rollup header is
	// offline.TestGatewayCannotWipeRegistrations: it depends on the bucket
	// offline/ creates.)
	// The offline role reads tokens but announces no fleet state.
	_ = of.Publish("longlink.fleet.state.h1", []byte(`{"host":"h1","worker":"w"}`))
	_ = of.FlushTimeout(2 * time.Second)

	time.Sleep(200 * time.Millisecond)
	for _, c := range []struct {
		sub string
		v   *violations
	}{
		{"longlink.fleet.admin.all", gv}, {"longlink.fleet.admin.all", rv}, {"longlink.fleet.admin.all", ov},
		{"$KV.LONGLINK_FLEET_KEYS.fleet", gv}, {"$KV.LONGLINK_FLEET_KEYS.fleet", rv}, {"$KV.LONGLINK_FLEET_KEYS.fleet", ov},
		{"$KV." + push.DeviceBucket + ".>", gv}, {"longlink.fleet.state.h1", ov},
	} {
		if !c.v.saw(c.sub) {
			t.Errorf("no permissions violation reported for %s", c.sub)
		}
	}
}
