package fleet_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/push"
)

// natsWithRoles runs an embedded NATS with the role users (push/auth.go).
func natsWithRoles(t *testing.T) (url string, sec push.Secret) {
	t.Helper()
	sec = push.Secret("0123456789abcdef0123456789abcdef")
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", Secret: sec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL(), sec
}

func connect(t *testing.T, url string, sec push.Secret, r push.Role) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, push.ClientAuth{Secret: sec}.As(r), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func TestFleetOverNATS(t *testing.T) {
	url, sec := natsWithRoles(t)
	keys, _, err := fleet.LoadOrCreateKeys(t.TempDir() + "/fleet-keys.json")
	if err != nil {
		t.Fatal(err)
	}
	var conns [3]atomic.Int64
	var asked [3]atomic.Value
	start := func(i int, host string, nc *nats.Conn) *fleet.Fleet {
		f, err := fleet.Start(fleet.Config{
			Conn: nc, Host: host, Worker: host + "/w0", Addr: host + ":7100", Region: "north", Carrier: "telecom",
			Interval: 200 * time.Millisecond,
			Stats:    func() fleet.Stats { return fleet.Stats{Conns: int(conns[i].Load())} },
			Keys:     keys,
			Admin: func(q fleet.AdminRequest) fleet.AdminReply {
				asked[i].Store(q.Op + " by " + q.By)
				return fleet.AdminReply{OK: true, Body: json.RawMessage(`{"done":true}`)}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	ncs := [3]*nats.Conn{connect(t, url, sec, push.RoleGateway), connect(t, url, sec, push.RoleGateway), connect(t, url, sec, push.RoleGateway)}
	conns[0].Store(500)
	fa := start(0, "a", ncs[0])
	defer fa.Close()
	fb := start(1, "b", ncs[1])
	defer fb.Close()
	fc := start(2, "c", ncs[2])
	defer fc.Close()
	conv := waitFor(t, 3*time.Second, "every host to see the fleet", func() bool {
		return len(fa.View().Hosts()) == 3 && len(fb.View().Hosts()) == 3 && len(fc.View().Hosts()) == 3
	})
	t.Logf("fleet view converged in %v (interval 200ms)", conv)

	// Lists from any host name the least loaded first, and verify.
	sl := fb.Lists().SignedList(fleet.Place{Region: "north", Carrier: "telecom"}, false, 0)
	nl, err := fleet.Verify(sl, keys.Pins())
	if err != nil || len(nl.Nodes) != 3 || nl.Nodes[2].Host != "a" {
		t.Fatalf("list %v %v (a holds 500 connections: last)", nl, err)
	}

	// Admin over NATS: only the admin role may ask; every host answers.
	admin := connect(t, url, sec, push.RoleAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	reps, err := fleet.Ask(ctx, admin, fleet.AdminAll, fleet.AdminRequest{Op: "status", By: "test"}, 300*time.Millisecond)
	if err != nil || len(reps) != 3 {
		t.Fatalf("ask all: %v %v", reps, err)
	}
	reps, err = fleet.Ask(ctx, admin, "b", fleet.AdminRequest{Op: "evacuate", By: "test"}, 300*time.Millisecond)
	if err != nil || len(reps) != 1 || reps[0].Host != "b" || !reps[0].OK || asked[1].Load() != "evacuate by test" {
		t.Fatalf("ask b: %v %v", reps, err)
	}
	// A gateway (internet-facing) cannot send admin requests.
	gctx, gcancel := context.WithTimeout(context.Background(), time.Second)
	defer gcancel()
	if reps, err := fleet.Ask(gctx, ncs[0], "b", fleet.AdminRequest{Op: "evacuate", By: "intruder"}, 200*time.Millisecond); err == nil {
		t.Fatalf("the gateway role sent an admin request: %v", reps)
	}
	if asked[1].Load() != "evacuate by test" {
		t.Fatal("the gateway role's admin request arrived")
	}

	// A host that dies without a goodbye leaves every view within the expiry (3 intervals).
	ncs[2].Close() // c's process is gone: no goodbye, no more announcements
	gone := waitFor(t, 3*time.Second, "c to leave the views", func() bool {
		_, ina := fa.View().Host("c")
		_, inb := fb.View().Host("c")
		return !ina && !inb
	})
	t.Logf("silent host left the views after %v (expiry 600ms)", gone)
	if gone < 300*time.Millisecond {
		t.Fatalf("c left after %v: before its expiry", gone)
	}
	// A host that closes says goodbye: gone at once.
	fb.Close()
	waitFor(t, time.Second, "b's goodbye", func() bool { _, in := fa.View().Host("b"); return !in })

	// The router's watcher sees the fleet with the router role.
	v, stop, err := fleet.Watch(connect(t, url, sec, push.RoleRouter), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	waitFor(t, 2*time.Second, "the router's view", func() bool { _, in := v.Host("a"); return in })
}

func TestKeyDistribution(t *testing.T) {
	sec := push.Secret("0123456789abcdef0123456789abcdef")
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", Secret: sec, JetStreamDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	url := ns.ClientURL()
	admin := connect(t, url, sec, push.RoleAdmin)
	router := connect(t, url, sec, push.RoleRouter)
	gw := connect(t, url, sec, push.RoleGateway)

	got := make(chan string, 8)
	f, err := fleet.FollowKeys(router, time.Hour, nil, func(name string, v []byte, rev uint64) {
		got <- name + "=" + string(v)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := fleet.PublishKeys(ctx, admin, 1, map[string][]byte{fleet.KeyToken: []byte("t1"), fleet.KeyFleet: []byte("f1")}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"token=t1": true, "fleet=f1": true}
	for len(want) > 0 {
		select {
		case s := <-got:
			if !want[s] {
				t.Fatalf("applied %q", s)
			}
			delete(want, s)
		case <-ctx.Done():
			t.Fatalf("not applied (the nudge should fetch at once; poll is an hour): %v", want)
		}
	}
	// A new revision is applied once; an unchanged one is not re-applied.
	if _, err := fleet.PublishKeys(ctx, admin, 1, map[string][]byte{fleet.KeyToken: []byte("t2")}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "token=t2" {
			t.Fatalf("applied %q, want token=t2", s)
		}
	case <-ctx.Done():
		t.Fatal("second revision not applied")
	}
	f.Fetch()
	select {
	case s := <-got:
		t.Fatalf("re-applied %q", s)
	case <-time.After(100 * time.Millisecond):
	}
	// The internet-facing gateway role can neither write nor read the keys.
	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer wcancel()
	if _, err := fleet.PublishKeys(wctx, gw, 1, map[string][]byte{fleet.KeyToken: []byte("evil")}); err == nil {
		t.Fatal("the gateway role published keys")
	}
	var read atomic.Bool
	gf, err := fleet.FollowKeys(gw, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)), func(string, []byte, uint64) { read.Store(true) })
	if err == nil {
		time.Sleep(300 * time.Millisecond)
		gf.Stop()
	}
	if read.Load() {
		t.Fatal("the gateway role read the distributed keys")
	}
}
