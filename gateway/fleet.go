package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/admission"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// FleetConfig makes this worker a member of a fleet of gateway hosts
// (package fleet, docs/fleet.md). It needs Config.NATS.
type FleetConfig struct {
	Host        string // host id (default: the host name, made subject-safe)
	Region      string
	Carrier     string
	Advertise   string // host:port clients dial (default: the listen address unless it is a wildcard)
	AdvertiseWS string // ws:// or wss:// URL for browsers
	Table       *fleet.Table
	Keys        *fleet.KeyRing // required: signs the node lists
	Interval    time.Duration  // announcements (default 2s)
	Lists       fleet.ListConfig
}

// fleetState is the worker's fleet membership and evacuation.
type fleetState struct {
	cfg *FleetConfig
	nc  *nats.Conn
	f   *fleet.Fleet
	cpu fleet.CPUSampler

	evacMu     sync.Mutex
	evacStop   chan struct{} // closes to stop the running evacuation
	evacuating atomic.Bool

	evacuated prometheus.Counter
	evacGauge prometheus.Gauge
}

// startFleet joins the fleet (after the listener is bound: the advertised
// address may name its port).
func (s *Server) startFleet() error {
	fc := s.cfg.Fleet
	if fc == nil {
		return nil
	}
	if s.cfg.NATS == "" {
		return errors.New("gateway: a fleet needs NATS (Config.NATS)")
	}
	if fc.Keys == nil {
		return errors.New("gateway: FleetConfig.Keys is required")
	}
	adv := fc.Advertise
	if adv == "" {
		if h, _, err := net.SplitHostPort(s.addr); err == nil {
			if ip, err := netip.ParseAddr(h); err == nil && !ip.IsUnspecified() {
				adv = s.addr
			}
		}
		if adv == "" {
			s.log.Warn("fleet: listening on a wildcard address and no --advertise: this host announces itself but node lists never name it")
		}
	}
	nc, err := push.Connect(s.cfg.NATS, "longlink fleet "+s.cfg.Node, s.log, s.cfg.NATSOptions...)
	if err != nil {
		return fmt.Errorf("gateway: fleet NATS: %w", err)
	}
	st := &fleetState{cfg: fc, nc: nc}
	st.evacuated = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_fleet_evacuated_total", Help: "Connections sent GOAWAY 3014 redirect by an evacuation of this host."})
	st.evacGauge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "longlink_fleet_evacuating", Help: "1 while this host is being evacuated (it is then listed by no node list)."})
	s.metrics.reg.MustRegister(st.evacuated, st.evacGauge)
	st.f, err = fleet.Start(fleet.Config{
		Conn: nc, Host: fc.Host, Worker: s.cfg.Node, Addr: adv, WS: fc.AdvertiseWS,
		Region: fc.Region, Carrier: fc.Carrier, Interval: fc.Interval,
		Stats: func() fleet.Stats { return s.fleetStats(st) }, Admin: s.fleetAdmin, Keys: fc.Keys, Lists: fc.Lists,
		Logger: s.log, Metrics: s.metrics.reg,
	})
	if err != nil {
		nc.Close()
		return err
	}
	s.fleetP.Store(st) // the loops are running: they read it atomically
	s.log.Info("fleet: joined", "host", fc.Host, "advertise", adv, "region", fc.Region, "carrier", fc.Carrier, "regions", fc.Table.Len())
	return nil
}

// fl is the fleet membership, nil when not in a fleet (or not yet joined).
func (s *Server) fl() *fleetState { return s.fleetP.Load() }

// stopFleet says goodbye: the others stop listing this worker at once.
func (s *Server) stopFleet() {
	if s.fl() == nil {
		return
	}
	s.StopEvacuation("shutdown")
	s.fl().f.Close()
	s.fl().nc.Close()
}

func (s *Server) fleetStats(st *fleetState) fleet.Stats {
	th, _ := s.fwd.adm.Level()
	sw := s.Switches()
	return fleet.Stats{
		Conns: s.wheel.Len(), MaxConns: sw.MaxConns, CPU: st.cpu.Sample(),
		Admission: admissionLevel(th), Degrade: s.DegradeLevel(),
		Draining: s.draining.Load(), Evacuating: st.evacuating.Load(),
	}
}

// admissionLevel condenses the admission threshold for the fleet's weight:
// 0 everything admitted, 1 the lowest business priorities shed, 2 shake
// and open (priority 3) shed too, 3 more important calls shed.
func admissionLevel(th uint32) int {
	if th >= admission.MaxLevel {
		return 0
	}
	biz := int(th / 128) // the threshold's business priority (admission: 128 user levels per priority)
	return min(3, max(1, 5-biz))
}

// Fleet returns the fleet membership (nil when not in a fleet).
func (s *Server) Fleet() *fleet.Fleet {
	if s.fl() == nil {
		return nil
	}
	return s.fl().f
}

// ReloadFleetKeys swaps the fleet signing keys (SIGHUP, POST /reload, or
// keys published to the fleet); lists are re-signed at once.
func (s *Server) ReloadFleetKeys(r *fleet.KeyRing) error {
	if s.fl() == nil {
		return errors.New("gateway: not in a fleet")
	}
	if r == nil {
		return errors.New("gateway: nil fleet keys")
	}
	s.fl().f.Lists().SetKeys(r)
	s.log.Info("audit: fleet keys reloaded", "active", r.Active(), "ids", r.IDs())
	return nil
}

// clientPlace is where the region table puts addr.
func (s *Server) clientPlace(a netip.Addr) (fleet.Place, bool) {
	return s.cfg.Fleet.Table.Lookup(a)
}

// nodesFor is the signed list (serialized) for connection c, or nil.
// Allocation-free: a table lookup and a cached slice. It reads c's socket
// address: only on c's event loop (off the loop use onLoop, or nodesAt
// with an address read on the loop).
func (s *Server) nodesFor(c *conn, excludeSelf bool) []byte {
	if s.fl() == nil {
		return nil
	}
	return s.nodesAt(s.peerAddr(c), c.id, excludeSelf)
}

// nodesAt is the signed list for a client at peer; pick chooses the variant.
func (s *Server) nodesAt(peer netip.AddrPort, pick uint64, excludeSelf bool) []byte {
	st := s.fl()
	if st == nil {
		return nil
	}
	p, _ := s.clientPlace(peer.Addr())
	return st.f.Lists().Signed(p, excludeSelf, pick)
}

// peerForNodes is c's address for nodesAt, read on the loop; the zero
// address when not in a fleet (no lookup needed).
func (s *Server) peerForNodes(c *conn) netip.AddrPort {
	if s.fl() == nil {
		return netip.AddrPort{}
	}
	return s.peerAddr(c)
}

// loopTask runs a function as a gnet task on an event loop.
type loopTask func()

func (f loopTask) Run(context.Context) error { f(); return nil }

// onLoop runs fn on c's event loop if c is still open (and not closing)
// there: what off-loop senders use to build a frame that reads c's socket.
func (s *Server) onLoop(c *conn, fn func()) {
	_ = c.gc.EventLoop().Execute(context.Background(), loopTask(func() {
		if c.state.Load() == stateClosed || c.closeCode.Load() != 0 || c.closing() {
			return
		}
		fn()
	}))
}

// redirectOnLoop sends c (from any goroutine) GOAWAY 3014 with its list,
// or fallback (may be nil) when the fleet has nowhere else for it.
func (s *Server) redirectOnLoop(c *conn, redirect, msg string, after time.Duration, fallback []byte) {
	s.onLoop(c, func() {
		if f := s.redirectFrame(c, redirect, msg, after); f != nil {
			s.send(c, f)
		} else if fallback != nil {
			s.send(c, fallback)
		}
	})
}

// otherHosts reports whether the fleet lists any host but this one.
func (s *Server) otherHosts() bool {
	st := s.fl()
	return st != nil && st.f.Lists().Signed(fleet.Place{}, true, 0) != nil
}

// redirectFrame is GOAWAY 3014 with the node list for c (this host left
// out), or nil when the fleet has nowhere else to send it. redirect is the
// old single-address field, kept for clients that predate node lists.
func (s *Server) redirectFrame(c *conn, redirect, msg string, after time.Duration) []byte {
	raw := s.nodesFor(c, true)
	if raw == nil {
		return nil
	}
	var sl pb.SignedNodeList
	if proto.Unmarshal(raw, &sl) != nil {
		return nil
	}
	body, _ := proto.Marshal(&pb.GoAway{Code: uint32(codec.CodeRedirect), ReconnectAfterMs: uint32(after / time.Millisecond), Redirect: redirect, Message: msg, Nodes: &sl})
	return codec.AppendFrame(nil, codec.CmdGoAway, 0, 0, body)
}

// drainAsync sends c (from any goroutine) the drain's GOAWAY: 3014 with
// nodes in a fleet, else the plain shutdown GOAWAY.
func (s *Server) drainAsync(c *conn) {
	if s.fl() == nil {
		_ = s.sendAsync(c, s.goAwayFrame(), nil)
		return
	}
	s.redirectOnLoop(c, "", "server draining", time.Duration(rand.IntN(1000))*time.Millisecond, s.goAwayFrame())
}

// drainFrame is drainAsync's frame, built on c's loop.
func (s *Server) drainFrame(c *conn) []byte {
	if f := s.redirectFrame(c, "", "server draining", time.Duration(rand.IntN(1000))*time.Millisecond); f != nil {
		return f
	}
	return s.goAwayFrame()
}

// --- evacuation ---

// Evacuate empties this host at rate connections per second (for the
// whole host: each worker takes its share by the host's workers in the
// fleet view): each authenticated client gets GOAWAY 3014 with a node list
// without this host, in random order, one per 1/rate slot; with jitter
// each client's reconnect delay is a random point in its slot (evacPacer),
// so the other hosts see a spread trickle that never bunches. Connections still open 10 s after
// their GOAWAY are closed with 3014. The host announces itself as
// evacuating (no list names it) until StopEvacuation or a restart.
func (s *Server) Evacuate(rate float64, jitter bool, who string) error {
	if s.fl() == nil {
		return errors.New("not in a fleet: nowhere to send the clients")
	}
	if rate <= 0 || rate > 1e6 {
		return errors.New("rate must be 0 < N/s ≤ 1e6")
	}
	st := s.fl()
	st.evacMu.Lock()
	if st.evacStop != nil {
		close(st.evacStop)
	}
	stop := make(chan struct{})
	st.evacStop = stop
	st.evacMu.Unlock()
	workers := 1
	if h, ok := st.f.View().Host(st.f.Host()); ok && len(h.Workers) > 0 {
		workers = len(h.Workers)
	}
	share := rate / float64(workers)
	st.evacuating.Store(true)
	st.evacGauge.Set(1)
	st.f.AnnounceNow()
	s.log.Info("audit: evacuation started", "by", who, "rate", rate, "worker_rate", share, "jitter", jitter, "connections", s.SessionUsers())
	go s.evacuate(stop, share, jitter, who)
	return nil
}

// StopEvacuation ends an evacuation; the host is listed again.
func (s *Server) StopEvacuation(who string) bool {
	if s.fl() == nil {
		return false
	}
	st := s.fl()
	st.evacMu.Lock()
	defer st.evacMu.Unlock()
	was := st.evacuating.Swap(false)
	if st.evacStop != nil {
		close(st.evacStop)
		st.evacStop = nil
	}
	st.evacGauge.Set(0)
	if was {
		s.log.Info("audit: evacuation stopped", "by", who)
		st.f.AnnounceNow()
	}
	return was
}

// Evacuating reports whether an evacuation is in force.
func (s *Server) Evacuating() bool { return s.fl() != nil && s.fl().evacuating.Load() }

func (s *Server) evacuate(stop chan struct{}, rate float64, jitter bool, who string) {
	const grace = 10 * time.Second
	sent := map[*conn]time.Time{} // this evacuation's GOAWAYs; gone with it
	total := 0
	pace := newEvacPacer(rate, jitter, time.Now())
	t := time.NewTimer(time.Hour) // to each slot's start: a coarse tick would send late, then catch up
	defer t.Stop()
	for {
		var todo []*conn
		s.eachSession(func(c *conn) {
			if _, ok := sent[c]; !ok {
				todo = append(todo, c)
			}
		})
		rand.Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
		for _, c := range todo {
			for w := pace.wait(time.Now()); w > 0; w = pace.wait(time.Now()) {
				t.Reset(w) // no stale fire since Go 1.23
				select {
				case <-stop:
					s.log.Info("audit: evacuation ended early", "by", who, "redirected", total)
					return
				case <-t.C:
				}
			}
			if !s.otherHosts() {
				s.log.Warn("fleet: evacuation: no other host to send clients to; waiting")
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
				}
				continue
			}
			if c.state.Load() == stateClosed || c.closeCode.Load() != 0 {
				continue
			}
			after := pace.take(time.Now())
			s.redirectOnLoop(c, "", "host evacuating", after, nil)
			sent[c] = time.Now()
			total++
			s.fl().evacuated.Inc()
		}
		// Close those that ignored their GOAWAY; forget the closed ones.
		cut := time.Now().Add(-grace)
		for c, at := range sent {
			switch {
			case c.state.Load() == stateClosed:
				delete(sent, c)
			case at.Before(cut) && c.closeCode.Load() == 0:
				s.closeAsync(c, codec.CodeRedirect)
			}
		}
		if len(todo) == 0 && len(sent) == 0 && total > 0 {
			s.log.Info("audit: evacuation complete: no client left", "by", who, "redirected", total)
			total = 0 // stay evacuating (unlisted); newcomers are sent on too
		}
		select {
		case <-stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// --- HTTP ---

// handleNodes serves GET /v1/nodes on the short-connection port: the
// signed node list for the caller's address (region table), protobuf with
// Accept: application/x-protobuf, else JSON. ?region=&carrier= are hints
// used only when the table does not know the address (tests, labs).
func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	if s.fl() == nil {
		writeHTTPError(w, http.StatusNotFound, codec.CodeProtocol, "this gateway is not in a fleet")
		return
	}
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	a := ap.Addr().Unmap()
	// The last hop of the last header line: a balancer that adds its own
	// line (haproxy's option forwardfor) leaves the client's lines first.
	if xffs := r.Header.Values("X-Forwarded-For"); len(xffs) > 0 && s.fromProxyNet(a) {
		parts := strings.Split(xffs[len(xffs)-1], ",")
		if fa, err := netip.ParseAddr(strings.TrimSpace(parts[len(parts)-1])); err == nil {
			a = fa.Unmap() // the balancer's view of the client
		}
	}
	p, ok := s.clientPlace(a)
	if !ok {
		q := r.URL.Query()
		p = fleet.Place{Region: q.Get("region"), Carrier: q.Get("carrier")}
		if (p.Region != "" && fleet.CheckTag(p.Region) != nil) || (p.Carrier != "" && fleet.CheckTag(p.Carrier) != nil) {
			writeHTTPError(w, http.StatusBadRequest, codec.CodeProtocol, "bad region or carrier")
			return
		}
		// Only tags some host has: the list cache is per place, so
		// arbitrary hints must not each cost a cache entry and signatures.
		knownR, knownC := p.Region == "", p.Carrier == ""
		for _, h := range s.fl().f.View().Hosts() {
			knownR = knownR || h.Region == p.Region
			knownC = knownC || h.Carrier == p.Carrier
		}
		if !knownR {
			p = fleet.Place{}
		} else if !knownC {
			p.Carrier = ""
		}
	}
	raw := s.fl().f.Lists().Signed(p, false, rand.Uint64())
	if raw == nil {
		writeHTTPError(w, http.StatusServiceUnavailable, codec.CodeServerBusy, "no gateway host is listed")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if accepts(r, "application/x-protobuf") {
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(raw)
		return
	}
	var sl pb.SignedNodeList
	var nl pb.NodeList
	if proto.Unmarshal(raw, &sl) != nil || proto.Unmarshal(sl.List, &nl) != nil {
		writeHTTPError(w, http.StatusInternalServerError, codec.CodeProtocol, "bad cached list")
		return
	}
	type nodeJSON struct {
		Addr    string `json:"addr"`
		WS      string `json:"ws_url,omitempty"`
		Host    string `json:"host"`
		Weight  uint32 `json:"weight"`
		Region  string `json:"region,omitempty"`
		Carrier string `json:"carrier,omitempty"`
	}
	out := struct {
		List      string     `json:"list"`
		KeyID     uint32     `json:"key_id"`
		Signature string     `json:"signature"`
		Nodes     []nodeJSON `json:"nodes"`
		TTL       uint32     `json:"ttl_s"`
		IssuedMS  int64      `json:"issued_ms"`
		Region    string     `json:"region,omitempty"`
		Carrier   string     `json:"carrier,omitempty"`
	}{List: base64.StdEncoding.EncodeToString(sl.List), KeyID: sl.KeyId, Signature: base64.StdEncoding.EncodeToString(sl.Signature),
		TTL: nl.TtlS, IssuedMS: nl.IssuedMs, Region: nl.Region, Carrier: nl.Carrier}
	for _, n := range nl.Nodes {
		out.Nodes = append(out.Nodes, nodeJSON{n.Addr, n.WsUrl, n.Host, n.Weight, n.Region, n.Carrier})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (s *Server) fromProxyNet(a netip.Addr) bool {
	for _, p := range s.cfg.ProxyProtocolFrom {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func writeHTTPError(w http.ResponseWriter, status int, code codec.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(httpError{Code: code, Message: msg})
}

// handleFleet serves the admin port's /fleet (GET: the view) and
// /fleet/evacuate (POST {"rate": N, "jitter": true}; {"stop": true} ends it).
func (s *Server) handleFleet(w http.ResponseWriter, r *http.Request) {
	if s.fl() == nil {
		http.Error(w, "this gateway is not in a fleet", http.StatusConflict)
		return
	}
	who := r.RemoteAddr
	if fwd := r.Header.Get("X-Longlink-Remote"); fwd != "" && (who == "" || who == "@") {
		who = fwd + " (via supervisor)"
	}
	switch {
	case r.URL.Path == "/fleet" && r.Method == http.MethodGet:
		type hostJSON struct {
			fleet.Host
			Weight uint32 `json:"weight"`
			AgeMS  int64  `json:"age_ms"`
		}
		var hs []hostJSON
		for _, h := range s.fl().f.View().Hosts() {
			hs = append(hs, hostJSON{h, fleet.Weight(&h, s.fl().cfg.Lists.Capacity), time.Since(h.LastSeen).Milliseconds()})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"host": s.fl().f.Host(), "evacuating": s.Evacuating(), "hosts": hs})
	case r.URL.Path == "/fleet/evacuate" && r.Method == http.MethodPost:
		var q struct {
			Rate   float64 `json:"rate"`
			Jitter bool    `json:"jitter"`
			Stop   bool    `json:"stop"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<12)).Decode(&q); err != nil {
			http.Error(w, "bad evacuate JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		if q.Stop {
			s.StopEvacuation(who)
			fmt.Fprintln(w, `{"evacuating":false}`)
			return
		}
		if err := s.Evacuate(q.Rate, q.Jitter, who); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, `{"evacuating":true}`)
	case r.URL.Path == "/fleet/lists" && r.Method == http.MethodPost:
		n := s.SendNodeLists(who)
		fmt.Fprintf(w, "{\"sent\":%d}\n", n)
	default:
		http.Error(w, "GET /fleet, POST /fleet/evacuate or POST /fleet/lists", http.StatusNotFound)
	}
}

// SendNodeLists sends every authenticated client a CONFIG carrying its
// fresh node list (ClientConfig.nodes) beside the degrade settings in
// force: what an operator does after adding hosts. It returns how many
// clients it was queued for.
func (s *Server) SendNodeLists(who string) int {
	if s.fl() == nil {
		return 0
	}
	level := s.DegradeLevel()
	var base [3]pb.ClientConfig
	for i, n := range []pb.Network{pb.Network_NETWORK_UNKNOWN, pb.Network_NETWORK_WIFI, pb.Network_NETWORK_CELLULAR} {
		f, _, err := codec.Split(s.switches.configFrame(level, n), 0)
		if err == nil {
			_ = proto.Unmarshal(f.Body, &base[i])
		}
	}
	sent := 0
	s.eachSession(func(c *conn) {
		sent++
		s.onLoop(c, func() { // the list depends on c's address: read on its loop
			raw := s.nodesFor(c, false)
			if raw == nil {
				return
			}
			cc := proto.Clone(&base[networkIndex(c.network)]).(*pb.ClientConfig)
			cc.Nodes = &pb.SignedNodeList{}
			if proto.Unmarshal(raw, cc.Nodes) != nil {
				return
			}
			body, _ := proto.Marshal(cc)
			s.send(c, codec.AppendFrame(nil, codec.CmdConfig, 0, 0, body))
		})
	})
	s.log.Info("audit: node lists sent to the clients in CONFIG", "by", who, "clients", sent)
	return sent
}

// --- admin over NATS ---

// fleetAdmin answers an operator's request from NATS (only the NATS admin
// role can send one) by running it through this worker's own admin API, so
// the same checks apply and the same audit lines are written, naming the
// NATS caller. Op is "METHOD /path", e.g. "PUT /switches".
func (s *Server) fleetAdmin(q fleet.AdminRequest) fleet.AdminReply {
	method, path, ok := strings.Cut(q.Op, " ")
	if !ok || !strings.HasPrefix(path, "/") {
		return fleet.AdminReply{Error: `op must be "METHOD /path"`}
	}
	req, err := http.NewRequest(method, "http://fleet"+path, bytes.NewReader(q.Body))
	if err != nil {
		return fleet.AdminReply{Error: err.Error()}
	}
	req.RemoteAddr = "nats admin " + q.By // what the audit lines name as "by"
	req.Header.Set("Authorization", "Bearer "+s.cfg.AdminToken)
	rec := &recorder{h: http.Header{}, code: http.StatusOK}
	s.AdminHandler().ServeHTTP(rec, req)
	rep := fleet.AdminReply{OK: rec.code == http.StatusOK}
	body := bytes.TrimSpace(rec.body.Bytes())
	if json.Valid(body) {
		rep.Body = json.RawMessage(body)
	} else if len(body) > 0 {
		b, _ := json.Marshal(string(body))
		rep.Body = b
	}
	if !rep.OK {
		rep.Error = fmt.Sprintf("%d %s", rec.code, string(body))
	}
	return rep
}

// recorder is a minimal http.ResponseWriter for in-process admin calls.
type recorder struct {
	h    http.Header
	code int
	body bytes.Buffer
	wrot bool
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) Write(b []byte) (int, error) {
	r.wrot = true
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(code int) {
	if !r.wrot {
		r.code, r.wrot = code, true
	}
}
