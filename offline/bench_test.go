package offline

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/push"
)

// BenchmarkRouterNotify is the router's Notify with the offline path off
// and on (its hook: one sharded map lookup for a user without registered
// devices; a non-blocking hand-off for one with). Users are offline (the
// case the hook is for), so no node message is published.
func BenchmarkRouterNotify(b *testing.B) {
	ne := startNATS(b, b.TempDir())
	r, err := push.NewRouter(push.RouterConfig{Conn: ne.conn(b, push.RoleRouter), Grace: -1, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	js := ne.js(b, push.RoleOffline)
	if _, err := EnsureStream(ctxT(b, 10*time.Second), js, 1, time.Minute); err != nil {
		b.Fatal(err)
	}
	devs := &Devices{}
	for i := range devs.shards {
		devs.shards[i].m = map[uint64][]Device{}
	}
	devs.set(1, Device{Device: "phone", Reg: Registration{Platform: "apns", Token: apnsToken(1, 1)}})
	enq := NewEnqueuer(EnqueuerConfig{JS: js, Devices: devs, Queue: 1 << 10, Logger: quiet})
	defer enq.Close()
	for _, bc := range []struct {
		name string
		hook push.OfflineHook
		uid  uint64
	}{{"off", nil, 2}, {"on_unregistered", enq, 2}, {"on_registered", enq, 1}} {
		b.Run(bc.name, func(b *testing.B) {
			r.SetOffline(bc.hook)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := r.Notify(bc.uid, "", 1, uint64(i), nil); err != nil {
					b.Fatal(err)
				}
			}
			r.SetOffline(nil)
		})
	}
}

// BenchmarkOfflineThroughput: notifies per second through the queue
// (JetStream file store) and the sender to an APNs stand-in (HTTP/2, TLS,
// JWT checked), one distinct user and device per notify.
func BenchmarkOfflineThroughput(b *testing.B) {
	ne := startNATS(b, b.TempDir())
	js := ne.js(b, push.RoleOffline)
	ctx := ctxT(b, 5*time.Minute)
	devs, err := OpenDevices(ctx, js, 1, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer devs.Close()
	const users = 2000
	w := NewWriter(ne.conn(b, push.RoleGateway))
	for u := uint64(1); u <= users; u++ {
		if err := w.Put(ctx, u, "phone", Registration{Platform: "apns", Token: apnsToken(u, 1), Expires: time.Now().Add(time.Hour).Unix()}); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, 20*time.Second, "registrations", func() bool { return devs.Len() == users })
	srv, c := apnsEnv(b)
	none := func(context.Context, uint64) ([]string, error) { return nil, nil }
	snd, err := NewSender(ctx, SenderConfig{JS: js, Devices: devs, Presence: none, Clients: []provider.Client{c},
		Delay: time.Millisecond, Budget: time.Minute, Concurrency: 128, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer snd.Close()
	enq := NewEnqueuer(EnqueuerConfig{JS: js, Devices: devs, Budget: time.Minute, Logger: quiet})
	defer enq.Close()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for u := uint64(1); u <= users; u++ {
			enq.Notified(u, "", uint32(1+i), 1, nil, false)
		}
		want := (i + 1) * users
		waitFor(b, 2*time.Minute, "the round's requests", func() bool { return len(srv.Requests()) >= want })
	}
	el := time.Since(start)
	b.ReportMetric(float64(users*b.N)/el.Seconds(), "notifies/s")
	b.ReportMetric(float64(el.Nanoseconds())/float64(users*b.N), "ns/notify")
}

// BenchmarkDevicesHas is what the router's hook adds per notify for a
// user without registered devices (the sharded mirror lookup).
func BenchmarkDevicesHas(b *testing.B) {
	devs := &Devices{}
	for i := range devs.shards {
		devs.shards[i].m = map[uint64][]Device{}
	}
	for u := uint64(1); u <= 100000; u += 2 {
		devs.set(u, Device{Device: "phone"})
	}
	b.ReportAllocs()
	for i := uint64(0); b.Loop(); i++ {
		_ = devs.Has(i & 0xffff)
	}
}

// BenchmarkOnlineUserNotify: what a notify to a user with a registered
// device costs when that device is connected (the sender then cancels it),
// without and with the Online cache (filled, as the sender's first device
// query fills it). The process's CPU time (JetStream server, enqueuer,
// sender, all in this process) per notify, from the first notify until the
// queue is drained; 1,000 users, one device each, notifies spread over them.
func BenchmarkOnlineUserNotify(b *testing.B) {
	for _, cached := range []bool{false, true} {
		name := "queued"
		if cached {
			name = "online_cache"
		}
		b.Run(name, func(b *testing.B) {
			on := NewOnline(time.Hour, time.Second)
			e := newOfflineEnv(b, func(c *SenderConfig) {
				c.Delay = 20 * time.Millisecond
				if cached {
					c.Online = on
				}
			})
			const users = 1000
			for u := uint64(1); u <= users; u++ {
				e.devs.set(u, Device{Device: "phone", Revision: u, Reg: Registration{Platform: "apns", Token: apnsToken(u, 1), Expires: time.Now().Add(time.Hour).Unix()}})
				e.pres.set(u, "phone")
				if cached {
					fp, _ := e.devs.covered(u, nil)
					on.Fill(u, on.Begin(u), fp)
				}
			}
			cons, err := e.js.Consumer(ctxT(b, 5*time.Second), push.OfflineStream, push.OfflineDurable)
			if err != nil {
				b.Fatal(err)
			}
			cpu0 := cpuTime()
			for i := 0; b.Loop(); i++ {
				e.enq.Notified(uint64(i%users)+1, "", uint32(i/users%4)+1, uint64(i)+1, nil, true)
			}
			waitFor(b, time.Minute, "the queue drained", func() bool {
				ci, err := cons.Info(ctxT(b, 5*time.Second))
				return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 && len(e.enq.ch) == 0
			})
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/notify")
			if n := e.srv.Count(apnsToken(1, 1)); n != 0 {
				b.Fatalf("%d requests to a connected device", n)
			}
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
