package loadtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// childEnv marks a process started by the supervisor as a worker; its value
// is the role ("client" or "floor").
const childEnv = "LONGLINK_LOADTEST_CHILD"

// IsChild reports whether this process was started by the load tool as one
// of its workers. `longlink loadtest` (and a test binary's TestMain) call
// ChildMain when it is.
func IsChild() bool { return os.Getenv(childEnv) != "" }

// childSpec is the first line a worker reads on stdin.
type childSpec struct {
	Role string `json:"role"` // "client" or "floor"
	ID   int    `json:"id"`

	// client workers
	Target       string     `json:"target,omitempty"`     // ip:port
	Targets      []string   `json:"targets,omitempty"`    // ip:port each (fleet seeds; Target is the first)
	FleetPins    []string   `json:"fleet_pins,omitempty"` // verify node lists
	Reconnect    bool       `json:"reconnect,omitempty"`  // reconnect dropped connections
	Floor        bool       `json:"floor,omitempty"`      // the target is the floor server (raw 16-byte echo, no protocol)
	WS           bool       `json:"ws,omitempty"`         // connect with a WebSocket upgrade (gateway only)
	Encrypt      bool       `json:"encrypt,omitempty"`    // HELLO handshake, sealed records (gateway only)
	ServerKey    string     `json:"server_key,omitempty"` // the pin for --encrypt
	Sources      []string   `json:"sources,omitempty"`
	First        int        `json:"first"` // global index of this worker's first connection
	Conns        int        `json:"conns"`
	Rate         float64    `json:"rate"` // connections per second for this worker (0 = unlimited)
	Inflight     int        `json:"inflight"`
	Heartbeat    int64      `json:"heartbeat_ns"`
	Storm        int64      `json:"storm_ns"`
	Timeout      int64      `json:"timeout_ns"`
	Scenarios    []string   `json:"scenarios"`
	RPCRate      float64    `json:"rpc_rate"`
	Method       string     `json:"method,omitempty"`
	ShakeRate    float64    `json:"shake_rate"`
	CallBody     string     `json:"call_body,omitempty"`
	Mix          []mixEntry `json:"mix,omitempty"`
	Settle       int64      `json:"settle_ns"`
	RPCBody      int        `json:"rpc_body"`
	SlowFrac     float64    `json:"slow_frac"`
	SlowBody     int        `json:"slow_body"`
	SlowInterval int64      `json:"slow_interval_ns"`
	Keys         string     `json:"keys,omitempty"`
	UIDBase      uint64     `json:"uid_base"`
	HardStop     int64      `json:"hard_stop_ns"` // stop by itself this long after "start" whatever the parent says

	// floor servers
	Listen   string `json:"listen,omitempty"`
	MaxConns int    `json:"max_conns,omitempty"`
}

// childStats is one line a worker writes on stdout every reportEvery and once
// more (Final) when it stops. Counters are cumulative; histograms hold only
// the values recorded since the previous line (sparseHist pairs).
type childStats struct {
	ID       int                `json:"id"`
	Role     string             `json:"role"`
	T        int64              `json:"t"` // unix ns
	Ready    bool               `json:"ready,omitempty"`
	RampDone bool               `json:"ramp_done,omitempty"`
	Final    bool               `json:"final,omitempty"`
	C        map[string]int64   `json:"c"`           // cumulative counters and gauges, summed over workers
	Times    map[string]int64   `json:"times"`       // unix ns marks: *_start (min over workers) and *_end (max)
	Errors   map[string]int64   `json:"errors"`      // cumulative, by reason
	Hists    map[string][]int64 `json:"h,omitempty"` // interval histograms (µs): sparse value,count pairs (sparseHist)
	Policy   *policySeen        `json:"policy,omitempty"`
	Err      string             `json:"err,omitempty"` // fatal error of the worker
}

// policySeen is the heartbeat policy the first AUTH_OK carried.
type policySeen struct {
	MinS  uint32 `json:"min_s"`
	MaxS  uint32 `json:"max_s"`
	IdleS uint32 `json:"idle_s"`
}

// newHist returns a histogram of microseconds from 1 µs to 10 minutes.
func newHist() *hdr.Histogram { return hdr.New(1, int64(10*time.Minute/time.Microsecond), 3) }

// sparseHist is a worker's interval histogram: counts by value rounded down
// to 11 significant bits (1/1024, the precision of newHist's 3 significant
// decimal digits), so a report carries only the buckets it touched. Encoding an
// HDR histogram walks and deflates all of its ~20,000 buckets; at 60 worker
// processes reporting four times a second that was a sixth of the load
// tool's CPU in the encrypted million (perf, docs/measurements.md).
type sparseHist map[int64]int64

// histKey rounds v (µs) down to 1/1024 of its magnitude, as an HDR
// histogram with 3 significant digits does.
func histKey(v int64) int64 {
	if v < 2048 {
		return v
	}
	shift := bits.Len64(uint64(v)) - 11
	return v >> shift << shift
}

func (h sparseHist) record(v int64) { h[histKey(v)]++ }

// pairs returns the histogram as value,count pairs and empties it.
func (h sparseHist) pairs() []int64 {
	out := make([]int64, 0, 2*len(h))
	for v, n := range h {
		out = append(out, v, n)
	}
	clear(h)
	return out
}

// mergePairs adds value,count pairs (sparseHist.pairs) to an HDR histogram.
func mergePairs(h *hdr.Histogram, p []int64) {
	for i := 0; i+1 < len(p); i += 2 {
		if p[i] > 0 && p[i+1] > 0 {
			_ = h.RecordValues(p[i], p[i+1])
		}
	}
}

// ChildMain runs this process as a worker: it reads its spec from stdin and
// returns the exit code. Call it when IsChild is true.
func ChildMain() int {
	raiseFileLimit()
	runtime.GOMAXPROCS(2)
	in := bufio.NewReader(os.Stdin)
	line, err := in.ReadBytes('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest worker: no spec on stdin:", err)
		return 2
	}
	var spec childSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest worker: bad spec:", err)
		return 2
	}
	out := newStatsWriter(os.Stdout)
	cmds := make(chan string, 16)
	go func() {
		// Commands from the parent; EOF means the parent is gone: die.
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			cmds <- strings.TrimSpace(sc.Text())
		}
		os.Exit(3)
	}()
	switch spec.Role {
	case "client":
		err = runClient(&spec, cmds, out)
	case "floor":
		err = runFloor(&spec, cmds, out)
	default:
		err = fmt.Errorf("unknown role %q", spec.Role)
	}
	if err != nil {
		out.write(&childStats{ID: spec.ID, Role: spec.Role, T: time.Now().UnixNano(), Final: true, Err: err.Error()})
		fmt.Fprintf(os.Stderr, "loadtest %s worker %d: %v\n", spec.Role, spec.ID, err)
		return 1
	}
	return 0
}

// statsWriter serialises stats lines to the parent.
type statsWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newStatsWriter(f *os.File) *statsWriter { return &statsWriter{w: bufio.NewWriterSize(f, 64<<10)} }

func (s *statsWriter) write(st *childStats) {
	b, err := json.Marshal(st)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.w.Write(b)
	s.w.WriteByte('\n')
	s.w.Flush()
	s.mu.Unlock()
}
