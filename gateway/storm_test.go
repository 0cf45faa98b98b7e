package gateway

import (
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// TestHandshakeStorm measures, on one loop, the heartbeat round trip of an
// idle authenticated connection while storm goroutines reconnect as fast as
// they can: plaintext accept+AUTH, encrypted HELLO with the X25519 work on
// the loop, and on the handshake pool. The storm replays one recorded HELLO
// so the load generator spends no X25519 work of its own (the server does
// all of it; replays are never admitted). A measurement, not a check: run
// it with LONGLINK_STORM=1 (under flock /tmp/longlink-load.lock).
func TestHandshakeStorm(t *testing.T) {
	if os.Getenv("LONGLINK_STORM") == "" {
		t.Skip("set LONGLINK_STORM=1 to measure")
	}
	const stormers, dur = 8, 3 * time.Second
	for _, mode := range []struct {
		name    string
		workers int
		enc     bool
	}{{"plaintext", 0, false}, {"encrypted_on_loop", -1, true}, {"encrypted_pool", 0, true}} {
		s, _ := secureServer(t, EncryptionOptional, func(c *Config) { c.Loops = 1; c.HandshakeWorkers = mode.workers; c.MaxFrameRate = 1 << 15 })
		probe := dialWire(t, s.Addr())
		probe.auth(token(t, 1, "", time.Hour), "probe")
		_, hello := helloFrame(t, testServerKey, token(t, 2, "", time.Hour), "storm")
		var done atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := range stormers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					nc, err := net.DialTimeout("tcp", s.Addr(), time.Second)
					if err != nil {
						continue
					}
					first := hello
					if !mode.enc {
						body, _ := proto.Marshal(&pb.Auth{Token: token(t, uint64(1000+g), "", time.Hour), Device: fmt.Sprint("d", i)})
						first = codec.AppendFrame(nil, codec.CmdAuth, 0, 0, body)
					}
					_ = nc.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := nc.Write(first); err == nil {
						if n, _ := nc.Read(buf); n > 0 {
							done.Add(1)
						}
					}
					nc.Close()
				}
			}()
		}
		var rtts []time.Duration
		deadline := time.Now().Add(dur)
		for seq := uint16(1); time.Now().Before(deadline); seq++ {
			t0 := time.Now()
			probe.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, seq, nil))
			probe.expect(codec.CmdPong, 2*time.Second)
			rtts = append(rtts, time.Since(t0))
			time.Sleep(2 * time.Millisecond)
		}
		close(stop)
		wg.Wait()
		slices.Sort(rtts)
		q := func(p float64) time.Duration { return rtts[int(float64(len(rtts)-1)*p)] }
		t.Logf("%-18s handshakes+AUTH %6.0f/s   probe heartbeat RTT p50 %v p99 %v max %v (%d probes)",
			mode.name, float64(done.Load())/dur.Seconds(), q(0.5), q(0.99), rtts[len(rtts)-1], len(rtts))
		_ = s.Close()
	}
}
