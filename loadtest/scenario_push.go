package loadtest

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// The push scenario drives the gateway's gRPC PushService from the
// supervisor once the ramp is done: Multicast calls of LONGLINK_PUSH_BATCH
// random users (default 200) at LONGLINK_PUSH_RATE user-notifies per second
// (default 20000) to LONGLINK_PUSH_GRPC (default 127.0.0.1:7102). Each carries
// one of four types, an ever-increasing version (so the gateway's
// never-backwards rule drops nothing) and the call's wall-clock time as an
// 8-byte payload; client workers record "push" latency from it at receipt.
// The gateway leg then reports CPU per delivered notify; the floor leg's
// pushed 16-byte writes are the baseline.
func init() {
	registerScenario(scenarioDef{name: "push", summary: "notifies driven through the push API (gRPC Multicast, env LONGLINK_PUSH_GRPC/RATE/BATCH); delivery latency from the API call",
		worker: func(*engine) workerScenario { return pushScenario{} },
		parent: func(*leg) parentHook { return &pushDriver{} }})
}

type pushScenario struct{ nopScenario }

func (pushScenario) frame(e *engine, _ int, f codec.Frame) bool {
	if f.Cmd != codec.CmdPush {
		return false
	}
	b := f.Body
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return true
		}
		b = b[n:]
		if num == 3 && typ == protowire.BytesType {
			p, _ := protowire.ConsumeBytes(b)
			if len(p) == 8 {
				if sent := int64(binary.BigEndian.Uint64(p)); sent > 0 && sent <= e.now {
					e.record("push", sent)
				}
			}
			return true
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return true
		}
		b = b[n:]
	}
	return true
}

type pushDriver struct{ once sync.Once }

func envOr(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}

func (d *pushDriver) second(l *leg, now time.Time) {
	if l.kind != "gateway" || l.steadyAt.IsZero() {
		return
	}
	d.once.Do(func() { go d.run(l) })
}

func (d *pushDriver) run(l *leg) {
	addr := os.Getenv("LONGLINK_PUSH_GRPC")
	if addr == "" {
		addr = "127.0.0.1:7102"
	}
	rate, batch := envOr("LONGLINK_PUSH_RATE", 20000), int(envOr("LONGLINK_PUSH_BATCH", 200))
	// PushService wants the host's push token: LONGLINK_PUSH_TOKEN_FILE, or
	// push.token beside the key file (the gateway's data directory).
	tf := os.Getenv("LONGLINK_PUSH_TOKEN_FILE")
	if tf == "" {
		tf = filepath.Join(filepath.Dir(l.cfg.Keys), push.PushTokenFile)
	}
	tok, _, err := push.LoadOrCreateToken(tf, false)
	if err != nil {
		l.logf("push: %v", err)
		return
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(push.BearerToken(tok)))
	if err != nil {
		l.logf("push: %v", err)
		return
	}
	defer cc.Close()
	api := pb.NewPushServiceClient(cc)
	l.logf("push: %g notifies/s in multicasts of %d to %s", rate, batch, addr)
	var version uint64
	calls := rate / float64(batch)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	acc := 0.0
	uids := make([]uint64, batch)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var sem = make(chan struct{}, 8)
	for now := range tick.C {
		if !l.deadline.IsZero() && now.After(l.deadline) {
			return
		}
		for acc += calls / 100; acc >= 1; acc-- {
			for i := range uids {
				uids[i] = l.cfg.UIDBase + uint64(rng.IntN(l.cfg.Conns))
			}
			version++
			payload := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
			req := &pb.MulticastRequest{Uids: append([]uint64(nil), uids...), Type: uint32(1 + version%4), Version: version, Payload: payload}
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, _ = api.Multicast(ctx, req)
				cancel()
			}()
		}
	}
}
