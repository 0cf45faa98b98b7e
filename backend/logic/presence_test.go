package logic

import (
	"context"
	"runtime"
	"slices"
	"testing"

	"github.com/longlink/longlink/backend"
)

// TestPresenceDevices: the first device lives inline, later ones in the
// side map; a late Offline of an older connection is ignored; the first
// device going promotes another; the last going leaves nothing behind.
func TestPresenceDevices(t *testing.T) {
	l := open(t, "", Config{})
	defer l.Close()
	ctx := context.Background()
	on := func(dev, node string, conn uint64) {
		t.Helper()
		if err := l.Online(ctx, backend.Presence{UID: 7, Device: dev, Node: node, ConnID: conn}); err != nil {
			t.Fatal(err)
		}
	}
	off := func(dev, node string, conn uint64) {
		t.Helper()
		if err := l.Offline(ctx, backend.Presence{UID: 7, Device: dev, Node: node, ConnID: conn}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(except string, devs ...string) {
		t.Helper()
		got, known := l.devices(7, except)
		slices.Sort(got)
		if !known && len(devs) > 0 || !slices.Equal(got, devs) {
			t.Fatalf("devices except %q: %v (known %v), want %v", except, got, known, devs)
		}
	}
	if _, known := l.devices(7, ""); known {
		t.Fatal("unknown user reported known")
	}
	on("phone", "gw-a", 1)
	on("pad", "gw-b", 2)
	on("web", "gw-a", 3)
	want("", "pad", "phone", "web")
	want("pad", "phone", "web")

	on("phone", "gw-b", 4)  // the phone reconnected elsewhere
	off("phone", "gw-a", 1) // the old connection's late Offline: ignored
	want("", "pad", "phone", "web")
	off("nowhere", "gw-z", 9) // a node never seen: ignored
	want("", "pad", "phone", "web")

	off("phone", "gw-b", 4) // the inline device goes: another is promoted
	want("", "pad", "web")
	off("web", "gw-a", 3)
	want("web", "pad")
	off("pad", "gw-b", 2)
	if devs, known := l.devices(7, ""); known || devs != nil {
		t.Fatalf("after the last Offline: %v known %v", devs, known)
	}
	if len(l.pres) != 0 || len(l.more) != 0 {
		t.Fatalf("left behind: pres %v more %v", l.pres, l.more)
	}
	if len(l.nodes) != 2 {
		t.Fatalf("nodes interned %v, want gw-a and gw-b only", l.nodes)
	}
}

// TestPresenceMemory: an online user with one device costs the logic its
// map slot and nothing else (the device string is the caller's). The
// slice layout this replaced measured 100 B per user here (63 B now).
func TestPresenceMemory(t *testing.T) {
	l := open(t, "", Config{})
	defer l.Close()
	const n = 100_000
	ctx := context.Background()
	dev := "android-0123456" // one string, as the gateway passes its conn's
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for uid := uint64(1); uid <= n; uid++ {
		_ = l.Online(ctx, backend.Presence{UID: uid, Device: dev, Node: "gw-a", ConnID: uid})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("presence: %.1f B per online user", per)
	if per > 80 {
		t.Fatalf("presence costs %.1f B per online user, want ≤ 80", per)
	}
	runtime.KeepAlive(l)
}
