package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/longlink/longlink/heartbeat"
)

// AdminHandler serves /metrics, /healthz and /status for this worker.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { WriteStatus(w, r, s.Status()) })
	mux.HandleFunc("/heartbeat/policy", s.handlePolicy)
	mux.HandleFunc("/switches", s.handleSwitches)
	mux.HandleFunc("/keys/reload", s.handleKeysReload)
	mux.HandleFunc("POST /reload", s.handleReload)
	mux.HandleFunc("/fleet", s.handleFleet)
	mux.HandleFunc("/fleet/", s.handleFleet)
	mux.HandleFunc("/debug/pprof/", pprof.Index) // profiles, behind the admin token
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.shakeRoutes(mux)
	return s.requireToken(mux)
}

// ready is nil when this process should take traffic, else why not.
func (s *Server) ready() error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	if s.push != nil && s.push.node != nil {
		if err := s.push.node.Ready(); err != nil {
			return err
		}
	}
	if s.cfg.Ready != nil {
		return s.cfg.Ready()
	}
	return nil
}

// ListenAdmin listens on host:port, or on a unix socket given as unix:/path
// (removing a stale socket file first). The supervisor listens with it too.
func ListenAdmin(addr string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		_ = os.Remove(p)
		return net.Listen("unix", p)
	}
	return net.Listen("tcp", addr)
}

// ServeAdmin starts the admin HTTP listener in the background and returns
// its bound address.
func (s *Server) ServeAdmin(addr string) (string, error) {
	ln, err := ListenAdmin(addr)
	if err != nil {
		return "", fmt.Errorf("gateway: admin listen %s: %w", addr, err)
	}
	s.admin = &http.Server{Handler: s.AdminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.admin.Serve(ln) }()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				s.sampleStatus(now)
			case <-s.done:
				return
			}
		}
	}()
	s.adminAddr = ln.Addr().String()
	return s.adminAddr, nil
}

// policyJSON is the admin API's form of heartbeat.Policies: durations as
// Go duration strings ("210s", "9m40s").
type policyJSON struct {
	Min  string `json:"min"`
	Max  string `json:"max"`
	Step string `json:"step"`
	Idle string `json:"idle"`
}

type policiesJSON struct {
	Unknown  policyJSON `json:"unknown"`
	WiFi     policyJSON `json:"wifi"`
	Cellular policyJSON `json:"cellular"`
}

func toPolicyJSON(p heartbeat.Policy) policyJSON {
	return policyJSON{Min: p.Min.String(), Max: p.Max.String(), Step: p.Step.String(), Idle: p.Idle.String()}
}

func toPoliciesJSON(ps heartbeat.Policies) policiesJSON {
	return policiesJSON{Unknown: toPolicyJSON(ps.Unknown), WiFi: toPolicyJSON(ps.WiFi), Cellular: toPolicyJSON(ps.Cellular)}
}

func (pj policiesJSON) policies() (heartbeat.Policies, error) {
	var ps heartbeat.Policies
	var err error
	for _, f := range []struct {
		j policyJSON
		p *heartbeat.Policy
	}{{pj.Unknown, &ps.Unknown}, {pj.WiFi, &ps.WiFi}, {pj.Cellular, &ps.Cellular}} {
		if *f.p, err = f.j.policy(); err != nil {
			return ps, fmt.Errorf("bad duration: %w", err)
		}
	}
	return ps, nil
}

func (pj policyJSON) policy() (heartbeat.Policy, error) {
	var p heartbeat.Policy
	for _, f := range []struct {
		s string
		d *time.Duration
	}{{pj.Min, &p.Min}, {pj.Max, &p.Max}, {pj.Step, &p.Step}, {pj.Idle, &p.Idle}} {
		d, err := time.ParseDuration(f.s)
		if err != nil {
			return p, err
		}
		*f.d = d
	}
	return p, nil
}

// handlePolicy serves GET (the policies in force) and PUT (replace them,
// then push POLICY frames to every connected client) on /heartbeat/policy.
// PUT takes either full policies or {"scale": 2} to multiply the current ones.
func (s *Server) handlePolicy(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodPut, http.MethodPost:
		var req struct {
			policiesJSON
			Scale float64 `json:"scale"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "bad policy JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		var ps heartbeat.Policies
		if req.Scale > 0 {
			ps = s.basePolicies().Scale(req.Scale)
		} else {
			var err error
			if ps, err = req.policies(); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		if err := s.SetHeartbeatPolicies(ps); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	default:
		http.Error(w, "GET or PUT", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(toPoliciesJSON(s.HeartbeatPolicies()))
}
