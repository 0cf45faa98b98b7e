// Package supervisor owns the multi-process mode of the gateway (--workers N):
// Run starts N copies of this program as gateway workers sharing the client
// port (SO_REUSEPORT), restarts any that die, forwards SIGHUP (reload) and
// SIGTERM/SIGINT (drain) to them, and serves one admin address for the host:
// /metrics merged over the workers (MergeWorkerMetrics and its gauge rules),
// /status, /healthz and /readyz over every worker, and the switch endpoints
// forwarded to each. It also owns both sides of the lifeline protocol by
// which a worker learns its supervisor is gone (the pipe handed down as fd 3,
// and WatchStop on the worker's side), and the private run directory
// (NewRunDir) holding every socket they talk over.
//
// It builds on package gateway (workers are gateway.Servers; the merged
// page is a gateway.Status); gateway does not import it.
package supervisor

import (
	"bytes"
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
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/buildinfo"
)

// Config configures Run.
type Config struct {
	Workers         int
	Admin           string   // the one admin address for the whole gateway
	DataDir         string   // keys.json; worker admin sockets go under run/
	Args            []string // the command line after the program name, given to each worker
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	Extra           prometheus.Gatherer // optional series of the supervisor process itself (the push router), served beside the sums
	AdminToken      string              // protects switch endpoints and worker drain
	Ready           func() error        // optional readiness of this process's own part (the push hub) for /readyz
	Links           []gateway.LinkCheck // links of this process for /status (the shake ledger)
	// RunDir is the supervisor's private directory (from NewRunDir): worker
	// admin sockets, and the embedded logic's socket and secret. Default: a
	// new one. Run removes it on exit.
	RunDir string
}

// NewRunDir creates <data>/run/<pid> for a supervisor, 0700 (run/ too), so
// that only this user may reach the sockets in it: every socket the
// supervisor and its workers talk over lives there.
func NewRunDir(dataDir string) (string, error) {
	parent := filepath.Join(dataDir, "run")
	dir := filepath.Join(parent, strconv.Itoa(os.Getpid()))
	// Ours alone, but it may survive an earlier run under the same pid (a
	// container's pid 1): start empty, so the logic secret is new each start.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("run directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("run directory: %w", err)
	}
	for _, d := range []string{parent, dir} { // MkdirAll keeps the mode of what existed
		if err := os.Chmod(d, 0o700); err != nil {
			return "", fmt.Errorf("run directory: %w", err)
		}
	}
	// A supervisor killed with SIGKILL leaves its directory (sockets and a
	// secret nobody uses any more): remove those of processes that are gone.
	if ents, err := os.ReadDir(parent); err == nil {
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 && pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH {
				_ = os.RemoveAll(filepath.Join(parent, e.Name()))
			}
		}
	}
	return dir, nil
}

// Run starts Workers copies of this program as gateway workers
// sharing the client port (SO_REUSEPORT), restarts any that die, serves their
// metrics merged on one admin address, and on SIGTERM or SIGINT passes the
// signal on and waits for them to drain. It returns the exit code.
//
// One process here can hold only ~19,000 open files, so a million connections
// need about 60 workers; on hosts with a raised limit one worker does.
func Run(cfg Config) int {
	log := gateway.WithAuditRing(cfg.Logger) // /status shows the recent audit lines
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
	runDir := cfg.RunDir
	if runDir == "" {
		if runDir, err = NewRunDir(cfg.DataDir); err != nil {
			log.Error("cannot create the run directory", "err", err)
			return 1
		}
	}
	defer os.RemoveAll(runDir)

	sv := &supervisor{ready: cfg.Ready, token: cfg.AdminToken, log: log, exe: exe, args: cfg.Args, runDir: runDir, workers: make([]*workerProc, cfg.Workers), started: time.Now(), extra: cfg.Extra, links: cfg.Links}
	if sv.lifeline, sv.lifelineW, err = os.Pipe(); err != nil {
		log.Error("cannot create the workers' lifeline pipe", "err", err)
		return 1
	}
	defer sv.lifelineW.Close() // also keeps it reachable (a finalizer would close it) until we return
	for i := range sv.workers {
		sv.workers[i] = &workerProc{index: i, sock: filepath.Join(runDir, fmt.Sprintf("w%d.sock", i))}
		sv.start(sv.workers[i])
	}
	log.Info("supervisor started", "workers", cfg.Workers, "pid", os.Getpid())

	var admin *http.Server
	if cfg.Admin != "" {
		ln, err := gateway.ListenAdmin(cfg.Admin)
		if err != nil {
			log.Error("cannot start admin listener", "addr", cfg.Admin, "err", err)
			sv.stopAll(cfg.ShutdownTimeout)
			return 1
		}
		admin = &http.Server{Handler: sv.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = admin.Serve(ln) }()
		stopSampling := make(chan struct{})
		defer close(stopSampling)
		go sv.sampleOwn(stopSampling)
		log.Info("admin listening", "addr", ln.Addr().String(), "endpoints", "/metrics /healthz /status (merged over workers)")
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	s := <-sig
	for s == syscall.SIGHUP { // reload (keys, configuration): each worker does its own
		log.Info("audit: SIGHUP: reload forwarded to the workers")
		sv.signalAll(syscall.SIGHUP)
		s = <-sig
	}
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
	links []gateway.LinkCheck

	statMu sync.Mutex
	proc   gateway.ProcSampler  // the supervisor's own memory and CPU
	series gateway.StatusSeries // of its RSS, anonymous RSS and CPU

	// lifeline's read end is every worker's fd 3; the supervisor holds the
	// write end until it exits, so a worker reads EOF when it is gone.
	lifeline, lifelineW *os.File

	mu       sync.Mutex
	workers  []*workerProc
	stopping bool
	wg       sync.WaitGroup
}

// signalAll sends sig to every running worker.
func (sv *supervisor) signalAll(sig os.Signal) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	for _, w := range sv.workers {
		if w != nil && w.cmd != nil && w.cmd.Process != nil {
			_ = w.cmd.Process.Signal(sig)
		}
	}
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
	// Workers drain when we die: Pdeathsig, and EOF on the lifeline (fd 3)
	// in case Pdeathsig misses (it follows the forking thread, not the
	// process). WatchStop starts one drain whichever comes first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if sv.lifeline != nil {
		cmd.ExtraFiles = []*os.File{sv.lifeline}
		cmd.Env = append(cmd.Environ(), lifelineEnv+"=3")
	}
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

// lifelineEnv tells a worker which inherited fd is the supervisor's
// lifeline pipe.
const lifelineEnv = "LONGLINK_SUPERVISOR_FD"

// Stop says when a gateway process should stop (see WatchStop).
type Stop struct {
	// Drain yields once, with the reason, when an orderly drain should begin.
	Drain <-chan string
	// Now is closed when a single process is asked to stop a second time:
	// the operator's "stop now". Never in a worker: its later signals are
	// the same stop again (the supervisor forwards SIGTERM while systemd or a
	// terminal signals the whole group, and Pdeathsig and the lifeline both
	// report the supervisor's death), and would cut its drain short; the
	// supervisor kills a worker that overruns its shutdown timeout.
	Now <-chan struct{}
}

// WatchStop watches SIGTERM and SIGINT and, in a worker, its supervisor
// (the lifeline pipe; without one, its parent pid changing). It is the
// worker's side of the lifeline Run hands down; a gateway run as one
// process (worker false) uses it for its signals alone.
func WatchStop(log *slog.Logger, worker bool) Stop {
	drain, now := make(chan string, 1), make(chan struct{})
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	var parent <-chan struct{}
	if worker {
		parent = watchParent(log)
	}
	go func() {
		draining := false
		for {
			var why string
			select {
			case s := <-sig:
				why = "signal " + s.String()
			case <-parent:
				why, parent = "supervisor gone", nil
			}
			switch {
			case !draining:
				draining = true
				drain <- why
			case worker:
				log.Info("already draining; not stopping again", "reason", why)
			default:
				close(now)
				return
			}
		}
	}()
	return Stop{Drain: drain, Now: now}
}

// watchParent returns a channel closed when the supervisor is gone.
func watchParent(log *slog.Logger) <-chan struct{} {
	if fd, err := strconv.Atoi(os.Getenv(lifelineEnv)); err == nil && fd > 2 {
		os.Unsetenv(lifelineEnv)
		return watchLifeline(os.NewFile(uintptr(fd), "supervisor-lifeline"))
	}
	log.Warn("no supervisor lifeline; watching the parent pid instead")
	gone, ppid := make(chan struct{}), os.Getppid()
	go func() {
		for os.Getppid() == ppid {
			time.Sleep(500 * time.Millisecond)
		}
		close(gone)
	}()
	return gone
}

// watchLifeline closes the result once f reads EOF (or fails): every write
// end is closed, so the supervisor has exited.
func watchLifeline(f *os.File) <-chan struct{} {
	gone := make(chan struct{})
	go func() {
		var b [1]byte
		for {
			if _, err := f.Read(b[:]); err != nil {
				break
			}
		}
		f.Close()
		close(gone)
	}()
	return gone
}

// workerClient returns an HTTP client that talks to a worker's admin socket.
// Uncompressed: over a local socket gzip only costs each worker a flate
// writer (~1 MB, remade after GCs) and CPU on every 1 Hz /metrics scrape.
func workerClient(sock string) *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableCompression: true,
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
		texts := make([]io.Reader, len(bodies)) // by worker index; nil for one that did not answer
		for i, b := range bodies {
			if b != nil {
				alive++
				texts[i] = bytes.NewReader(b)
			}
		}
		fams, err := MergeWorkerMetrics(texts)
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
	mux.HandleFunc("/fleet", proxy) // the fleet view (worker 0's) and evacuation (every worker takes its share)
	mux.HandleFunc("/fleet/", proxy)
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
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if !sv.authorized(r) {
			http.Error(w, "admin token required", http.StatusUnauthorized)
			return
		}
		sv.log.Info("audit: reload requested; SIGHUP forwarded to the workers", "remote", r.RemoteAddr)
		sv.signalAll(syscall.SIGHUP) // each worker reloads as on SIGHUP
		fmt.Fprintln(w, "reload sent to every worker (see their audit lines)")
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
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { gateway.WriteStatus(w, r, sv.status()) })
	return mux
}

// ProcessCollector is the supervisor's own process series
// (longlink_supervisor_process_*: it runs the push hub and the embedded
// logic), for its Extra gatherer; the dashboard plots them.
func ProcessCollector() prometheus.Collector {
	return collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "longlink_supervisor"})
}

func gaugeFamily(name, help string, v float64) *dto.MetricFamily {
	return &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: dto.MetricType_GAUGE.Enum(),
		Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(v)}}}}
}

// mergeRule is how the supervisor folds one gauge of every worker into the
// host's series.
type mergeRule uint8

const (
	// mergeWorker keeps each worker's series apart under a worker label:
	// the rule of any gauge not classified below, so a new gauge is never
	// summed by mistake (TestEveryWorkerGaugeIsClassified asks for a rule).
	mergeWorker mergeRule = iota
	mergeSum              // additive: connections, memory, goroutines, files
	mergeMax              // a level, setting or info every worker holds alike
	mergeMin              // the earliest (start times), or the strictest (the admission threshold)
)

// gaugeRules classifies the gauges workers export. Counters, histograms and
// summaries always add up; a gauge adds up only if it counts something
// each process holds its own share of.
var gaugeRules = map[string]mergeRule{
	// additive
	"longlink_connections":            mergeSum,
	"longlink_sessions":               mergeSum,
	"longlink_open_queued":            mergeSum,
	"longlink_process_rss_anon_bytes": mergeSum,
	"longlink_push_registry_users":    mergeSum,
	"go_goroutines":                   mergeSum,
	"go_threads":                      mergeSum,
	"go_memstats_heap_objects":        mergeSum,
	"process_open_fds":                mergeSum,
	"process_resident_memory_bytes":   mergeSum,
	"process_virtual_memory_bytes":    mergeSum,
	// levels, states and settings: the same value seen by each worker
	"longlink_degrade_level":            mergeMax,
	"longlink_admission_overloaded":     mergeMax, // 1 if any worker is overloaded
	"longlink_admission_level":          mergeMin, // the strictest worker's threshold (8191 admits everything)
	"longlink_heartbeat_policy_seconds": mergeMax,
	"go_gc_gogc_percent":                mergeMax,
	"go_gc_gomemlimit_bytes":            mergeMax,
	"go_sched_gomaxprocs_threads":       mergeMax,
	"go_memstats_last_gc_time_seconds":  mergeMax,
	"process_max_fds":                   mergeMax,
	"process_virtual_memory_max_bytes":  mergeMax,
	// each worker's own view: which logic instances it has ejected
	"longlink_logic_client_instance_up":  mergeWorker,
	"longlink_logic_client_stores_mixed": mergeMax, // 1 if any worker sees instances on different stores
}

// gaugeRule returns the rule for a gauge (or untyped) family and whether it
// was classified: the table, then *_info (info series, value 1: max) and
// *_start_time_seconds (min), then go_memstats_*_bytes (additive).
func gaugeRule(name string) (mergeRule, bool) {
	if r, ok := gaugeRules[name]; ok {
		return r, true
	}
	switch {
	case strings.HasSuffix(name, "_info"):
		return mergeMax, true
	case strings.HasSuffix(name, "_start_time_seconds"):
		return mergeMin, true
	case strings.HasPrefix(name, "go_memstats_") && strings.HasSuffix(name, "_bytes"):
		return mergeSum, true
	}
	return mergeWorker, false
}

// MergeWorkerMetrics parses the workers' Prometheus text expositions (nil:
// a worker that did not answer; the position is the worker index) and
// merges series with the same name and labels into the host's: counters,
// histogram buckets and summary counts add up (summary quantiles take the
// maximum, a conservative merge); gauges follow gaugeRule, so
// process_resident_memory_bytes is the host's total while
// longlink_degrade_level stays the level in force, and an unclassified
// gauge keeps a worker="N" label instead of being summed.
func MergeWorkerMetrics(workers []io.Reader) ([]*dto.MetricFamily, error) {
	merged := map[string]*dto.MetricFamily{}
	index := map[string]map[string]*dto.Metric{}
	for w, r := range workers {
		if r == nil {
			continue
		}
		var p expfmt.TextParser
		fams, err := p.TextToMetricFamilies(r)
		if err != nil {
			return nil, fmt.Errorf("parse worker %d metrics: %w", w, err)
		}
		for name, f := range fams {
			mf, ok := merged[name]
			if !ok {
				mf = &dto.MetricFamily{Name: f.Name, Help: f.Help, Type: f.Type}
				merged[name] = mf
				index[name] = map[string]*dto.Metric{}
			}
			rule := mergeSum
			if t := f.GetType(); t == dto.MetricType_GAUGE || t == dto.MetricType_UNTYPED {
				rule, _ = gaugeRule(name)
			}
			for _, m := range f.Metric {
				if rule == mergeWorker {
					m.Label = append(m.Label, &dto.LabelPair{Name: proto.String("worker"), Value: proto.String(strconv.Itoa(w))})
					mf.Metric = append(mf.Metric, m)
					continue
				}
				key := labelKey(m)
				have, ok := index[name][key]
				if !ok {
					index[name][key] = m
					mf.Metric = append(mf.Metric, m)
					continue
				}
				mergeMetric(rule, have, m)
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

// fold combines two gauge values by rule.
func fold(rule mergeRule, a, b float64) float64 {
	switch rule {
	case mergeMax:
		return math.Max(a, b)
	case mergeMin:
		return math.Min(a, b)
	}
	return a + b
}

func mergeMetric(rule mergeRule, dst, src *dto.Metric) {
	switch {
	case dst.Counter != nil && src.Counter != nil:
		dst.Counter.Value = proto.Float64(dst.Counter.GetValue() + src.Counter.GetValue())
	case dst.Gauge != nil && src.Gauge != nil:
		dst.Gauge.Value = proto.Float64(fold(rule, dst.Gauge.GetValue(), src.Gauge.GetValue()))
	case dst.Untyped != nil && src.Untyped != nil:
		dst.Untyped.Value = proto.Float64(fold(rule, dst.Untyped.GetValue(), src.Untyped.GetValue()))
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

func (sv *supervisor) authorized(r *http.Request) bool { return gateway.BearerIs(r, sv.token) }

// sampleOwn records the supervisor's own memory and CPU once a second: it
// runs the push hub and the embedded logic, so the host's total counts it.
func (sv *supervisor) sampleOwn(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			sv.statMu.Lock()
			if sv.proc.Sample(now) {
				sv.series.RSS = gateway.PushPoint(sv.series.RSS, sv.proc.RSS())
				sv.series.Anon = gateway.PushPoint(sv.series.Anon, sv.proc.Anon())
				sv.series.CPU = gateway.PushPoint(sv.series.CPU, sv.proc.CPUPercent())
			}
			sv.statMu.Unlock()
		case <-stop:
			return
		}
	}
}

// status merges the workers' /status into the host's: counts, rates,
// memory and CPU add up (the supervisor's own included); the degrade level
// and queueing time are the worst worker's; links are the supervisor's own
// plus the workers' (down if down in any worker, naming it); audit lines
// are the supervisor's and every worker's, by time.
func (sv *supervisor) status() gateway.Status {
	st := gateway.Status{Node: "supervisor", Version: buildinfo.Version, UptimeS: time.Since(sv.started).Seconds()}
	sv.statMu.Lock()
	st.RSSBytes, st.AnonBytes, st.CPUPercent = sv.proc.RSS(), sv.proc.Anon(), sv.proc.CPUPercent()
	st.Series = sv.series.Clone()
	sv.statMu.Unlock()
	if sv.ready != nil {
		st.Links = append(st.Links, gateway.LinkCheck{Name: "push hub", Addr: "supervisor", Check: sv.ready}.Link())
		if err := sv.ready(); err != nil {
			st.Ready = err.Error()
		}
	}
	for _, lc := range sv.links {
		st.Links = append(st.Links, lc.Link())
	}
	linkAt := map[string]int{}
	st.Audit = gateway.RecentAudit()
	notReady := 0
	bodies := sv.scrape("/status?format=json")
	for i, b := range bodies {
		row := gateway.WorkerRow{Index: i}
		var ws gateway.Status
		if b == nil || json.Unmarshal(b, &ws) != nil {
			st.WorkerRows = append(st.WorkerRows, row)
			notReady++
			continue
		}
		row = gateway.WorkerRow{Index: i, Up: true, Node: ws.Node, Ready: ws.Ready, Draining: ws.Draining, Degrade: ws.Degrade,
			Connections: ws.Connections, CallsPerS: ws.CallsPerS, PushPerS: ws.PushPerS,
			RSSBytes: ws.RSSBytes, AnonBytes: ws.AnonBytes, CPUPercent: ws.CPUPercent, UptimeS: ws.UptimeS}
		st.WorkerRows = append(st.WorkerRows, row)
		if ws.Ready != "" {
			notReady++
		}
		st.Workers++
		st.Connections += ws.Connections
		st.Users += ws.Users
		st.Calls += ws.Calls
		st.CallErrors += ws.CallErrors
		st.CallsPerS += ws.CallsPerS
		st.ErrorsPerS += ws.ErrorsPerS
		st.PushPerS += ws.PushPerS
		st.HeartbeatsPerS += ws.HeartbeatsPerS
		st.RSSBytes += ws.RSSBytes
		st.AnonBytes += ws.AnonBytes
		st.CPUPercent += ws.CPUPercent
		st.Draining = st.Draining || ws.Draining
		st.Degrade = max(st.Degrade, ws.Degrade)
		st.Series.Add(ws.Series)
		if st.Switches == nil {
			st.Switches = ws.Switches
		}
		if st.Node == "supervisor" {
			st.Node = strings.TrimSuffix(ws.Node, "/w"+strconv.Itoa(i))
		}
		for _, l := range ws.Links {
			key := l.Name + " " + l.Addr
			j, seen := linkAt[key]
			if !seen {
				j = len(st.Links)
				linkAt[key] = j
				st.Links = append(st.Links, gateway.Link{Name: l.Name, Addr: l.Addr, Up: true})
			}
			if !l.Up {
				msg := fmt.Sprintf("w%d: %s", i, l.Err)
				if st.Links[j].Err != "" {
					msg = st.Links[j].Err + "; " + msg
				}
				st.Links[j].Up, st.Links[j].Err = false, msg
			}
		}
		for _, a := range ws.Audit {
			a.From = "w" + strconv.Itoa(i)
			st.Audit = append(st.Audit, a)
		}
	}
	if st.Ready == "" && len(bodies) > 0 && notReady == len(bodies) {
		st.Ready = "no worker ready"
	}
	sort.SliceStable(st.Audit, func(a, b int) bool { return st.Audit[a].Time.Before(st.Audit[b].Time) })
	if len(st.Audit) > gateway.AuditKeep {
		st.Audit = st.Audit[len(st.Audit)-gateway.AuditKeep:]
	}
	return st
}
