package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/internal/buildinfo"
)

// SupervisorConfig configures RunSupervisor.
type SupervisorConfig struct {
	Workers         int
	Admin           string   // the one admin address for the whole gateway
	DataDir         string   // keys.json; worker admin sockets go under run/
	Args            []string // the command line after the program name, given to each worker
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	Extra           prometheus.Gatherer // optional series of the supervisor process itself (the push router), served beside the sums
	AdminToken      string              // protects switch endpoints and worker drain
	Ready           func() error        // optional readiness of this process's own part (the push hub) for /readyz
}

// RunSupervisor starts Workers copies of this program as gateway workers
// sharing the client port (SO_REUSEPORT), restarts any that die, serves their
// metrics summed on one admin address, and on SIGTERM or SIGINT passes the
// signal on and waits for them to drain. It returns the exit code.
//
// One process here can hold only ~19,000 open files, so a million connections
// need about 60 workers; on hosts with a raised limit one worker does.
func RunSupervisor(cfg SupervisorConfig) int {
	log := cfg.Logger
	keyPath := auth.KeyFile(cfg.DataDir)
	if _, created, err := auth.LoadOrCreate(keyPath); err != nil { // before the workers race to create it
		log.Error("cannot load token keys", "file", keyPath, "err", err)
		return 1
	} else if created {
		log.Info("created a development token key; mint tokens with `longlink token --uid N`", "file", keyPath)
	}
	exe, err := os.Executable()
	if err != nil {
		log.Error("cannot find own executable", "err", err)
		return 1
	}
	runDir := filepath.Join(cfg.DataDir, "run", strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		log.Error("cannot create run directory", "err", err)
		return 1
	}
	defer os.RemoveAll(runDir)

	sv := &supervisor{ready: cfg.Ready, token: cfg.AdminToken, log: log, exe: exe, args: cfg.Args, runDir: runDir, workers: make([]*workerProc, cfg.Workers), started: time.Now(), extra: cfg.Extra}
	for i := range sv.workers {
		sv.workers[i] = &workerProc{index: i, sock: filepath.Join(runDir, fmt.Sprintf("w%d.sock", i))}
		sv.start(sv.workers[i])
	}
	log.Info("supervisor started", "workers", cfg.Workers, "pid", os.Getpid())

	var admin *http.Server
	if cfg.Admin != "" {
		ln, err := listenAdmin(cfg.Admin)
		if err != nil {
			log.Error("cannot start admin listener", "addr", cfg.Admin, "err", err)
			sv.stopAll(cfg.ShutdownTimeout)
			return 1
		}
		admin = &http.Server{Handler: sv.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = admin.Serve(ln) }()
		log.Info("admin listening", "addr", ln.Addr().String(), "endpoints", "/metrics /healthz /status (summed over workers)")
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Info("supervisor shutting down", "signal", s.String())
	sv.stopAll(cfg.ShutdownTimeout)
	if admin != nil {
		_ = admin.Close()
	}
	return 0
}

type supervisor struct {
	ready   func() error
	token   string
	log     *slog.Logger
	exe     string
	args    []string
	runDir  string
	started time.Time

	extra prometheus.Gatherer

	mu       sync.Mutex
	workers  []*workerProc
	stopping bool
	wg       sync.WaitGroup
}

type workerProc struct {
	index    int
	sock     string
	cmd      *exec.Cmd // guarded by supervisor.mu
	restarts int
	draining atomic.Bool // a drain was requested: the exit is expected
}

func (sv *supervisor) start(w *workerProc) {
	args := append(append([]string(nil), sv.args...), "--worker-index", strconv.Itoa(w.index), "--admin", "unix:"+w.sock)
	cmd := exec.Command(sv.exe, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // workers die with us
	if err := cmd.Start(); err != nil {
		sv.log.Error("cannot start worker", "worker", w.index, "err", err)
		return
	}
	sv.mu.Lock()
	w.cmd = cmd
	sv.mu.Unlock()
	sv.wg.Add(1)
	go func() {
		defer sv.wg.Done()
		began := time.Now()
		err := cmd.Wait()
		sv.mu.Lock()
		stopping := sv.stopping
		sv.mu.Unlock()
		if stopping {
			return
		}
		if time.Since(began) > time.Minute {
			w.restarts = 0
		}
		delay := min(time.Duration(1<<min(w.restarts, 5))*time.Second, 30*time.Second)
		w.restarts++
		if w.draining.Swap(false) {
			delay = 0
			sv.log.Info("drained worker exited; restarting", "worker", w.index)
		} else {
			sv.log.Error("worker exited; restarting", "worker", w.index, "err", err, "in", delay)
		}
		time.Sleep(delay)
		sv.mu.Lock()
		stopping = sv.stopping
		sv.mu.Unlock()
		if !stopping {
			sv.start(w)
		}
	}()
}

// stopAll sends SIGTERM to every worker, waits up to timeout (plus a
// margin) for them to drain, then kills what is left.
func (sv *supervisor) stopAll(timeout time.Duration) {
	sv.mu.Lock()
	sv.stopping = true
	var cmds []*exec.Cmd
	for _, w := range sv.workers {
		if w.cmd != nil && w.cmd.Process != nil {
			cmds = append(cmds, w.cmd)
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	sv.mu.Unlock()
	done := make(chan struct{})
	go func() { sv.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout + 5*time.Second):
		sv.log.Warn("workers did not stop in time; killing them")
		for _, c := range cmds {
			_ = c.Process.Kill()
		}
		<-done
	}
}

// client returns an HTTP client that talks to a worker's admin socket.
func workerClient(sock string) *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// scrape fetches path from every worker concurrently; failed workers are
// skipped (and counted by the caller through the result length).
func (sv *supervisor) scrape(path string) [][]byte {
	sv.mu.Lock()
	socks := make([]string, len(sv.workers))
	for i, w := range sv.workers {
		socks[i] = w.sock
	}
	sv.mu.Unlock()
	out := make([][]byte, len(socks))
	var wg sync.WaitGroup
	for i, sock := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := workerClient(sock).Get("http://worker" + path)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				out[i], _ = io.ReadAll(resp.Body)
			}
		}()
	}
	wg.Wait()
	return out
}

func (sv *supervisor) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		bodies := sv.scrape("/metrics")
		alive := 0
		var texts []io.Reader
		for _, b := range bodies {
			if b != nil {
				alive++
				texts = append(texts, strings.NewReader(string(b)))
			}
		}
		fams, err := SumMetrics(texts)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if sv.extra != nil {
			if more, err := sv.extra.Gather(); err == nil {
				fams = append(fams, more...)
			}
		}
		fams = append(fams, gaugeFamily("longlink_workers", "Worker processes answering the supervisor.", float64(alive)),
			gaugeFamily("longlink_workers_configured", "Worker processes configured.", float64(len(bodies))))
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, f := range fams {
			_ = enc.Encode(f)
		}
	})
	// Switch endpoints go to every worker (each checks the admin token too);
	// the answer is worker 0's.
	proxy := func(w http.ResponseWriter, r *http.Request) {
		if !sv.authorized(r) {
			sv.log.Warn("audit: unauthenticated admin request refused", "path", r.URL.Path, "remote", r.RemoteAddr)
			http.Error(w, "admin token required", http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		sv.mu.Lock()
		socks := make([]string, len(sv.workers))
		for i, wk := range sv.workers {
			socks[i] = wk.sock
		}
		sv.mu.Unlock()
		var first []byte
		status := http.StatusOK
		for i, sock := range socks {
			req, _ := http.NewRequest(r.Method, "http://worker"+r.URL.RequestURI(), strings.NewReader(string(body)))
			req.Header.Set("Authorization", r.Header.Get("Authorization"))
			req.Header.Set("X-Longlink-Remote", r.RemoteAddr) // for the workers' audit lines
			resp, err := workerClient(sock).Do(req)
			if err != nil {
				status = http.StatusBadGateway
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				status, first = resp.StatusCode, b
			} else if i == 0 && first == nil {
				first = b
			}
		}
		w.WriteHeader(status)
		_, _ = w.Write(first)
	}
	mux.HandleFunc("/heartbeat/", proxy)
	mux.HandleFunc("/switches", proxy)
	mux.HandleFunc("/shake/", proxy)
	mux.HandleFunc("POST /workers/{index}/drain", func(w http.ResponseWriter, r *http.Request) {
		if !sv.authorized(r) {
			http.Error(w, "admin token required", http.StatusUnauthorized)
			return
		}
		i, err := strconv.Atoi(r.PathValue("index"))
		sv.mu.Lock()
		var cmd *exec.Cmd
		if err == nil && i >= 0 && i < len(sv.workers) {
			cmd = sv.workers[i].cmd
			sv.workers[i].draining.Store(true)
		}
		sv.mu.Unlock()
		if cmd == nil || cmd.Process == nil {
			http.Error(w, "no such worker", http.StatusNotFound)
			return
		}
		sv.log.Info("audit: draining worker on request", "worker", i, "remote", r.RemoteAddr)
		_ = cmd.Process.Signal(syscall.SIGTERM) // it drains (GOAWAY over its window) and exits; we restart it
		fmt.Fprintf(w, "worker %d draining; it will be restarted\n", i)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ok := 0
		bodies := sv.scrape("/healthz")
		for _, b := range bodies {
			if b != nil {
				ok++
			}
		}
		if ok == 0 {
			http.Error(w, "no worker healthy", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok %d/%d workers\n", ok, len(bodies))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if sv.ready != nil {
			if err := sv.ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		ok, bodies := 0, sv.scrape("/readyz")
		for _, b := range bodies {
			if b != nil {
				ok++
			}
		}
		if ok == 0 {
			http.Error(w, "not ready: no worker ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ready %d/%d workers\n", ok, len(bodies))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		st := Status{Node: "supervisor", Version: buildinfo.Version, UptimeS: time.Since(sv.started).Seconds()}
		for _, b := range sv.scrape("/status?format=json") {
			var ws Status
			if b == nil || json.Unmarshal(b, &ws) != nil {
				continue
			}
			st.Workers++
			st.Connections += ws.Connections
			st.Users += ws.Users
			st.Calls += ws.Calls
			st.CallErrors += ws.CallErrors
			st.CallsPerS += ws.CallsPerS
			st.ErrorsPerS += ws.ErrorsPerS
			st.Draining = st.Draining || ws.Draining
			st.Degrade = max(st.Degrade, ws.Degrade)
			st.Series.add(ws.Series)
			if st.Node == "supervisor" {
				st.Node = strings.TrimSuffix(ws.Node, "/w"+strconv.Itoa(0))
			}
		}
		writeStatus(w, r, st)
	})
	return mux
}

func gaugeFamily(name, help string, v float64) *dto.MetricFamily {
	return &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: dto.MetricType_GAUGE.Enum(),
		Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(v)}}}}
}

// SumMetrics parses Prometheus text expositions and sums series with the
// same name and labels: counters, gauges and histogram buckets add up, so
// process_resident_memory_bytes and process_cpu_seconds_total become the
// gateway's totals. Start times take the minimum, summary quantiles the
// maximum (a conservative merge).
func SumMetrics(texts []io.Reader) ([]*dto.MetricFamily, error) {
	merged := map[string]*dto.MetricFamily{}
	index := map[string]map[string]*dto.Metric{}
	for _, r := range texts {
		var p expfmt.TextParser
		fams, err := p.TextToMetricFamilies(r)
		if err != nil {
			return nil, fmt.Errorf("parse worker metrics: %w", err)
		}
		for name, f := range fams {
			mf, ok := merged[name]
			if !ok {
				mf = &dto.MetricFamily{Name: f.Name, Help: f.Help, Type: f.Type}
				merged[name] = mf
				index[name] = map[string]*dto.Metric{}
			}
			for _, m := range f.Metric {
				key := labelKey(m)
				have, ok := index[name][key]
				if !ok {
					index[name][key] = m
					mf.Metric = append(mf.Metric, m)
					continue
				}
				addMetric(name, have, m)
			}
		}
	}
	names := make([]string, 0, len(merged))
	for n := range merged {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*dto.MetricFamily, 0, len(names))
	for _, n := range names {
		out = append(out, merged[n])
	}
	return out, nil
}

func labelKey(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.Label {
		b.WriteString(l.GetName())
		b.WriteByte('=')
		b.WriteString(l.GetValue())
		b.WriteByte(',')
	}
	return b.String()
}

func addMetric(name string, dst, src *dto.Metric) {
	switch {
	case dst.Counter != nil && src.Counter != nil:
		dst.Counter.Value = proto.Float64(dst.Counter.GetValue() + src.Counter.GetValue())
	case dst.Gauge != nil && src.Gauge != nil:
		if strings.HasSuffix(name, "start_time_seconds") {
			dst.Gauge.Value = proto.Float64(math.Min(dst.Gauge.GetValue(), src.Gauge.GetValue()))
		} else {
			dst.Gauge.Value = proto.Float64(dst.Gauge.GetValue() + src.Gauge.GetValue())
		}
	case dst.Untyped != nil && src.Untyped != nil:
		dst.Untyped.Value = proto.Float64(dst.Untyped.GetValue() + src.Untyped.GetValue())
	case dst.Histogram != nil && src.Histogram != nil:
		h, s := dst.Histogram, src.Histogram
		h.SampleCount = proto.Uint64(h.GetSampleCount() + s.GetSampleCount())
		h.SampleSum = proto.Float64(h.GetSampleSum() + s.GetSampleSum())
		for i := range h.Bucket {
			if i < len(s.Bucket) && h.Bucket[i].GetUpperBound() == s.Bucket[i].GetUpperBound() {
				h.Bucket[i].CumulativeCount = proto.Uint64(h.Bucket[i].GetCumulativeCount() + s.Bucket[i].GetCumulativeCount())
			}
		}
	case dst.Summary != nil && src.Summary != nil:
		sm, s := dst.Summary, src.Summary
		sm.SampleCount = proto.Uint64(sm.GetSampleCount() + s.GetSampleCount())
		sm.SampleSum = proto.Float64(sm.GetSampleSum() + s.GetSampleSum())
		for i := range sm.Quantile {
			if i < len(s.Quantile) {
				sm.Quantile[i].Value = proto.Float64(math.Max(sm.Quantile[i].GetValue(), s.Quantile[i].GetValue()))
			}
		}
	}
}

func (sv *supervisor) authorized(r *http.Request) bool { return bearerIs(r, sv.token) }
