package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/admission"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

func TestOverloadShedsByPriority(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	be := backend.NewEmbedded()
	slow := func(ctx context.Context, _ *backend.Request) ([]byte, error) {
		select {
		case <-time.After(2 * time.Millisecond):
		case <-ctx.Done():
		}
		return []byte("ok"), nil
	}
	be.Handle("msg.send", slow) // priority 1
	be.Handle("feed.get", slow) // default priority 4
	s := startServer(t, func(c *Config) {
		c.Backend = be
		c.PoolSize = 4 // ~2000 calls/s of capacity
		c.MaxFrameRate = 100000
		c.MaxInflight = 64
		c.Admission = AdmissionConfig{QueueTarget: 5 * time.Millisecond, Window: 200 * time.Millisecond, WindowCalls: 400}
	})
	var okHigh, busyHigh, okLow, busyLow atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := dialWire(t, s.Addr())
			w.auth(token(t, uint64(i+1), "", time.Hour), "d")
			method, ok, busy := "feed.get", &okLow, &busyLow
			if i%4 == 0 {
				method, ok, busy = "msg.send", &okHigh, &busyHigh
			}
			for seq := uint16(1); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				r := w.call(seq, method, nil)
				switch codec.Code(r.Code) {
				case codec.OK:
					ok.Add(1)
				case codec.CodeBusy:
					busy.Add(1)
				}
			}
		}(i)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("high: %d ok %d busy; low: %d ok %d busy", okHigh.Load(), busyHigh.Load(), okLow.Load(), busyLow.Load())
	if busyLow.Load() == 0 {
		t.Fatal("no shedding under overload")
	}
	highShare := float64(busyHigh.Load()) / float64(okHigh.Load()+busyHigh.Load()+1)
	lowShare := float64(busyLow.Load()) / float64(okLow.Load()+busyLow.Load()+1)
	if highShare >= lowShare {
		t.Fatalf("high priority shed %.0f%%, low %.0f%%: low priority must absorb the shedding", highShare*100, lowShare*100)
	}
	checkFor(t, 3*time.Second, func() error {
		if th, _ := s.fwd.adm.Level(); th != admission.MaxLevel {
			return errorf("threshold still %d after the load stopped", th)
		}
		return nil
	})
}

// Admitted high-priority calls don't wait behind queued low-priority ones,
// and a full queue answers busy without harm.
func TestPriorityLanes(t *testing.T) {
	release := make(chan struct{})
	be := backend.NewEmbedded()
	be.Handle("block", func(ctx context.Context, _ *backend.Request) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	})
	var order []string
	var mu sync.Mutex
	rec := func(name string) backend.Handler {
		return func(context.Context, *backend.Request) ([]byte, error) {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			return nil, nil
		}
	}
	be.Handle("feed.get", rec("low"))  // default priority 4
	be.Handle("msg.send", rec("high")) // priority 1
	s := startServer(t, func(c *Config) { c.Backend = be; c.PoolSize = 1; c.QueueSize = 4 })
	w := dialWire(t, s.Addr())
	w.auth(token(t, 1, "", time.Hour), "d")
	var b []byte
	req := func(seq uint16, m string) {
		body, _ := proto.Marshal(&pb.Request{Method: m})
		b = codec.AppendFrame(b, codec.CmdRequest, 0, seq, body)
	}
	req(1, "block")
	for i := uint16(2); i <= 7; i++ { // 4 fit in the low lane, 2 are refused
		req(i, "feed.get")
	}
	req(8, "msg.send")
	w.send(b)
	busy := 0
	for busy < 2 {
		f := w.expect(codec.CmdResponse, 2*time.Second)
		var r pb.Response
		_ = proto.Unmarshal(f.Body, &r)
		if codec.Code(r.Code) != codec.CodeBusy {
			t.Fatalf("before release: %d %v", f.Seq, &r)
		}
		busy++
	}
	time.Sleep(50 * time.Millisecond) // let the loop queue everything
	close(release)
	for i := 0; i < 6; i++ {
		w.expect(codec.CmdResponse, 2*time.Second)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 5 || order[0] != "high" {
		t.Fatalf("run order %v: the high-priority call must run first", order)
	}
}
