package logic

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/proto/pb"
)

// benchSetups are the stores compared: bbolt behind one instance, and the
// R3 JetStream store (3 embedded nodes) behind 1 or 3 instances, all
// through the gateway's gRPC pool.
var benchSetups = []struct {
	name      string
	instances int
	js        bool
}{{"bbolt-1", 1, false}, {"jetstream-R3-1", 1, true}, {"jetstream-R3-3", 3, true}}

func benchPool(b *testing.B, instances int, js bool) (*remote.Client, []*Logic) {
	var ls []*Logic
	if js {
		nc := startCluster(b, 3)
		for range instances {
			l, err := New(nc.openJS(b, "BENCH"), Config{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { l.Close() })
			ls = append(ls, l)
		}
	} else {
		st, err := OpenBolt(filepath.Join(b.TempDir(), "logic.db"))
		if err != nil {
			b.Fatal(err)
		}
		l, err := New(st, Config{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		ls = append(ls, l)
	}
	var addrs []string
	for _, l := range ls {
		a, _ := serveInstance(b, l)
		addrs = append(addrs, a)
	}
	return newPool(b, addrs...), ls
}

// report adds calls/s and the p50/p99 latencies of one call.
func report(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkClusterSend: msg.send with client_msg_id from 64 concurrent
// callers (32 senders to 32 receivers) through the pool.
func BenchmarkClusterSend(b *testing.B) {
	for _, s := range benchSetups {
		b.Run(s.name, func(b *testing.B) {
			p, _ := benchPool(b, s.instances, s.js)
			const workers = 64
			var (
				next atomic.Int64
				mu   sync.Mutex
				lat  []time.Duration
				wg   sync.WaitGroup
				fail atomic.Int64
			)
			b.ResetTimer()
			start := time.Now()
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []time.Duration
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							break
						}
						body, _ := proto.Marshal(&pb.SendRequest{To: uint64(100 + i%32), Text: "benchmark message", ClientMsgId: fmt.Sprint(i)})
						t0 := time.Now()
						if _, err := poolCallRaw(p, uint64(1+w%32), MethodSend, body); err != nil {
							fail.Add(1)
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if n := fail.Load(); n > 0 {
				b.Fatalf("%d sends failed", n)
			}
			report(b, lat, elapsed)
		})
	}
}

// BenchmarkClusterSync100Pending: one sync returning 100 pending messages,
// one call at a time through the pool.
func BenchmarkClusterSync100Pending(b *testing.B) {
	for _, s := range benchSetups {
		b.Run(s.name, func(b *testing.B) {
			p, ls := benchPool(b, s.instances, s.js)
			for i := range 100 {
				body, _ := proto.Marshal(&pb.SendRequest{To: 2, Text: fmt.Sprintf("pending message number %d", i)})
				if _, err := ls[0].Call(context.Background(), &backend.Request{UID: 1, Method: MethodSend, Body: body}); err != nil {
					b.Fatal(err)
				}
			}
			body, _ := proto.Marshal(&pb.SyncRequest{Limit: 100})
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				out, err := poolCallRaw(p, 2, MethodSync, body)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				if i == 0 {
					var rep pb.SyncReply
					if proto.Unmarshal(out, &rep) != nil || len(rep.Items) != 100 {
						b.Fatalf("sync returned %d items", len(rep.Items))
					}
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			report(b, lat, elapsed)
		})
	}
}
