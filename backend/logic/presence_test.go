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

// BenchmarkPresenceMemory reports what an online user with one device
// costs the logic: its map slot and nothing else (the device string is the
// caller's). The slice layout this replaced measured 100 B per user here
// at 100,000 users, this one 63 B. A benchmark, not a test: the heap
// figures move with whatever else the process is doing.
func BenchmarkPresenceMemory(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	dev := "android-0123456" // one string, as the gateway passes its conn's
	for b.Loop() {
		b.StopTimer()
		l := open(b, "", Config{})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		for uid := uint64(1); uid <= n; uid++ {
			_ = l.Online(ctx, backend.Presence{UID: uid, Device: dev, Node: "gw-a", ConnID: uid})
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/n, "B/user")
		runtime.KeepAlive(l)
		l.Close()
		b.StartTimer()
	}
}
