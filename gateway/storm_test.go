package gateway

import (
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/secure"
)

// TestHandshakeStorm measures, on one loop, the heartbeat round trip of an
// idle authenticated connection while storm goroutines reconnect as fast as
// they can: plaintext accept+AUTH, encrypted HELLO with the X25519 work on
// the loop, and on the handshake pool (the default). The storm replays one
// recorded HELLO so the load generator spends no X25519 work of its own (the
// server does all of it; replays are never admitted). Only answers count
// (AUTH_OK, HELLO_OK), not refusals. The modes run interleaved, round after
// round (LONGLINK_STORM_ROUNDS, default 3), so a busy host slows all of them
// alike; each round prints the encrypted/plaintext ratio.
// LONGLINK_STORM_RATE=N paces the storm to N connections per second in
// total instead of as fast as possible (the heartbeat latency of a loop that
// is not saturated). LONGLINK_STORM_MODES (comma-separated mode names)
// runs only those, e.g. for a CPU profile of one; LONGLINK_STORM_WORKERS
// sizes the pool. Each round also prints the process's CPU (server and
// generator) per answered connection, the figure a CPU-bound host divides
// into its cores. A measurement, not a check: run it with
// LONGLINK_STORM=1 (under flock /tmp/longlink-load.lock).
func TestHandshakeStorm(t *testing.T) {
	if os.Getenv("LONGLINK_STORM") == "" {
		t.Skip("set LONGLINK_STORM=1 to measure")
	}
	const stormers, dur = 8, 2 * time.Second
	rounds, _ := strconv.Atoi(os.Getenv("LONGLINK_STORM_ROUNDS"))
	rounds = max(rounds, 1)
	if os.Getenv("LONGLINK_STORM_ROUNDS") == "" {
		rounds = 3
	}
	rate, _ := strconv.Atoi(os.Getenv("LONGLINK_STORM_RATE"))
	type mode struct {
		name    string
		workers int
		enc     bool
		s       *Server
		probe   *wire
		rates   []float64
		p99s    []time.Duration
		cpus    []time.Duration // process CPU (server and generator) per answered connection
	}
	modes := []*mode{{name: "plaintext"}, {name: "encrypted_on_loop", workers: -1, enc: true}, {name: "encrypted_pool", enc: true}}
	modes[2].workers, _ = strconv.Atoi(os.Getenv("LONGLINK_STORM_WORKERS")) // the pool's size (0: the default)
	if only := os.Getenv("LONGLINK_STORM_MODES"); only != "" {              // e.g. encrypted_pool, for a profile of one mode
		modes = slices.DeleteFunc(modes, func(m *mode) bool { return !slices.Contains(strings.Split(only, ","), m.name) })
	}
	for _, m := range modes {
		m.s, _ = secureServer(t, EncryptionOptional, func(c *Config) { c.Loops = 1; c.HandshakeWorkers = m.workers; c.MaxFrameRate = 1 << 15 })
		m.probe = dialWire(t, m.s.Addr())
		m.probe.auth(token(t, 1, "", time.Hour), "probe")
	}
	_, hello := helloFrame(t, testServerKey, token(t, 2, "", time.Hour), "storm")
	var seq uint16
	for r := range rounds {
		for _, m := range modes {
			for w := time.Now(); secure.Pregenerated() < secure.EphemeralTarget() && time.Since(w) < time.Second; {
				time.Sleep(10 * time.Millisecond) // idle time: the workers refill the ephemeral store
			}
			time.Sleep(200 * time.Millisecond)
			var done, shed atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for g := range stormers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 4096)
					tok := token(t, uint64(1000+g), "", time.Hour) // minted once: the generator's CPU goes to connections
					want := codec.CmdHelloOK
					if !m.enc {
						want = codec.CmdAuthOK
					}
					next := time.Now()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						if rate > 0 {
							next = next.Add(time.Duration(stormers) * time.Second / time.Duration(rate))
							time.Sleep(time.Until(next))
						}
						nc, err := net.DialTimeout("tcp", m.s.Addr(), time.Second)
						if err != nil {
							continue
						}
						first := hello
						if !m.enc {
							body, _ := proto.Marshal(&pb.Auth{Token: tok, Device: fmt.Sprint("d", i)})
							first = codec.AppendFrame(nil, codec.CmdAuth, 0, 0, body)
						}
						_ = nc.SetDeadline(time.Now().Add(2 * time.Second))
						if _, err := nc.Write(first); err == nil {
							if n, _ := io.ReadAtLeast(nc, buf, codec.HeaderSize); n > 0 {
								switch codec.Cmd(buf[2]) { // the header's command byte
								case want:
									done.Add(1)
								case codec.CmdError:
									shed.Add(1)
								}
							}
						}
						nc.Close()
					}
				}()
			}
			var rtts []time.Duration
			cpu0 := processCPU()
			t0 := time.Now()
			deadline := t0.Add(dur)
			for time.Now().Before(deadline) {
				seq++
				t1 := time.Now()
				m.probe.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, seq, nil))
				m.probe.expect(codec.CmdPong, 2*time.Second)
				rtts = append(rtts, time.Since(t1))
				time.Sleep(2 * time.Millisecond)
			}
			close(stop)
			wg.Wait()
			el := time.Since(t0)
			cpuPer := (processCPU() - cpu0) / time.Duration(max(done.Load(), 1))
			slices.Sort(rtts)
			q := func(p float64) time.Duration { return rtts[int(float64(len(rtts)-1)*p)] }
			m.rates = append(m.rates, float64(done.Load())/el.Seconds())
			m.p99s = append(m.p99s, q(0.99))
			m.cpus = append(m.cpus, cpuPer)
			t.Logf("round %d %-18s handshakes+AUTH %6.0f/s (refused %d), process CPU %v each  probe heartbeat RTT p50 %v p99 %v max %v (%d probes)",
				r+1, m.name, m.rates[r], shed.Load(), cpuPer.Round(time.Microsecond), q(0.5), q(0.99), rtts[len(rtts)-1], len(rtts))
		}
		if len(modes) == 3 {
			t.Logf("round %d: pool/plaintext %.2fx, on-loop/plaintext %.2fx", r+1, modes[2].rates[r]/modes[0].rates[r], modes[1].rates[r]/modes[0].rates[r])
		}
	}
	for _, m := range modes {
		rs, ps, cs := slices.Clone(m.rates), slices.Clone(m.p99s), slices.Clone(m.cpus)
		slices.Sort(rs)
		slices.Sort(ps)
		slices.Sort(cs)
		t.Logf("%-18s rate min/median/max %.0f / %.0f / %.0f per s; probe p99 min/median/max %v / %v / %v; process CPU per connection %v / %v / %v",
			m.name, rs[0], rs[len(rs)/2], rs[len(rs)-1], ps[0], ps[len(ps)/2], ps[len(ps)-1],
			cs[0].Round(time.Microsecond), cs[len(cs)/2].Round(time.Microsecond), cs[len(cs)-1].Round(time.Microsecond))
	}
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
