package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// BenchmarkIdleConnMemory measures the gateway's process memory per idle
// authenticated connection: RSS growth divided by connections, at
// LONGLINK_BENCH_CONNS (default 15,000) connections held by a client in
// another process (one process here may open only ~20,000 files). Clients
// heartbeat every 5 s while it measures. Target: ≤ 1 KiB.
//
//	go test -run '^$' -bench IdleConnMemory -benchtime 1x ./gateway
func BenchmarkIdleConnMemory(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchIdleMemory(b, "tcp") })
	b.Run("websocket", func(b *testing.B) { benchIdleMemory(b, "ws") })
}

func benchIdleMemory(b *testing.B, mode string) {
	n := 15000
	if v, err := strconv.Atoi(os.Getenv("LONGLINK_BENCH_CONNS")); err == nil && v > 0 {
		n = v
	}
	for b.Loop() {
		s := startServer(b, func(c *Config) { c.Loops = 1; c.WheelTick = time.Second; c.HeartbeatInterval = 5 * time.Second })
		settle := func() uint64 {
			for i := 0; i < 3; i++ {
				runtime.GC()
				debug.FreeOSMemory()
			}
			time.Sleep(200 * time.Millisecond)
			return rss(b)
		}
		before := settle()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperClients$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("LONGLINK_HELPER_CLIENTS=%s,%d,%s", s.Addr(), n, mode))
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "ready") {
			b.Fatalf("helper: %q %v", line, err)
		}
		checkFor(b, 30*time.Second, func() error {
			if got := int(s.metrics.sessionsValue()); got < n {
				return fmt.Errorf("%d of %d sessions", got, n)
			}
			return nil
		})
		time.Sleep(6 * time.Second) // a heartbeat round
		after := settle()
		b.ReportMetric(float64(after-before)/float64(n), "B/conn")
		b.ReportMetric(float64(n), "conns")
		stdin.Close()
		_ = cmd.Wait()
	}
}

func rss(tb testing.TB) uint64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

// TestHelperClients is the client side of BenchmarkIdleConnMemory, run in
// its own process. It does nothing unless LONGLINK_HELPER_CLIENTS is set.
func TestHelperClients(t *testing.T) {
	spec := os.Getenv("LONGLINK_HELPER_CLIENTS")
	if spec == "" {
		t.Skip("helper process only")
	}
	parts := strings.Split(spec, ",")
	addr, mode := parts[0], parts[2]
	n, _ := strconv.Atoi(parts[1])
	conns := make([]net.Conn, 0, n)
	// wrap puts a frame in a masked binary WebSocket message in ws mode.
	wrap := func(f []byte) []byte {
		if mode != "ws" {
			return f
		}
		var out bytes.Buffer
		_ = ws.WriteFrame(&out, ws.MaskFrame(ws.NewBinaryFrame(f)))
		return out.Bytes()
	}
	for i := 0; i < n; i++ {
		var c net.Conn
		var err error
		if mode == "ws" {
			c, _, _, err = ws.Dial(context.Background(), "ws://"+addr+"/ws")
		} else {
			c, err = net.Dial("tcp", addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := proto.Marshal(&pb.Auth{Token: token(t, uint64(i+1), "", time.Hour), Device: "bench"})
		if _, err := c.Write(wrap(codec.AppendFrame(nil, codec.CmdAuth, 0, 0, body))); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	go func() {
		buf := make([]byte, 4096)
		hb := wrap(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 1, nil))
		for {
			for _, c := range conns {
				_, _ = c.Write(hb)
			}
			time.Sleep(time.Second)
			for _, c := range conns { // drain AUTH_OK and PONGs
				_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
				_, _ = c.Read(buf)
			}
			time.Sleep(4 * time.Second)
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
}
