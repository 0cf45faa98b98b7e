package gateway

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/shake"
)

// Switches are the operator's runtime levers, read and set through the admin
// API (GET/PUT /switches, token-protected) or `longlink admin`. Every change
// is applied at once (live connections hear about it within a second), is
// written to the audit log, and persists across restarts in SwitchesFile.
type Switches struct {
	// Degrade is the operator's degrade level, 0 (normal) to 3; with
	// AutoDegrade the gateway may go higher by itself while overload persists.
	Degrade     int  `json:"degrade"`
	AutoDegrade bool `json:"auto_degrade"`
	// DegradeShare is the percentage of clients (by user id) that degrade
	// CONFIG frames and redirects go to (default 100).
	DegradeShare int `json:"degrade_share"`
	// Redirect: at degrade level 3, the share is sent GOAWAY to this host:port.
	Redirect string `json:"redirect"`
	// Heartbeat policies (before the degrade scaling).
	Heartbeat *policiesJSON `json:"heartbeat"`
	// Connection admission.
	AcceptRate float64 `json:"accept_rate"`
	MaxConns   int     `json:"max_conns"`
	// Shake red packets (when this gateway dispenses them): pacing factor
	// and per-second issue limit (nil: leave as configured).
	ShakeSpeed *float64 `json:"shake_speed"`
	ShakeLimit *float64 `json:"shake_limit"`
	// ShakeOff answers every shake with "not now, come back in a minute".
	ShakeOff bool `json:"shake_off"`
}

// SwitchKeys lists every switch by its JSON name, in declaration order (what
// GET /switches shows and `longlink admin set` accepts).
func SwitchKeys() []string {
	t := reflect.TypeFor[Switches]()
	keys := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		keys = append(keys, name)
	}
	return keys
}

// degradeLevel is what one degrade level asks of clients.
type degradeLevel struct {
	heartbeatScale         float64
	backoffMin, backoffMax time.Duration
	shakeInterval          time.Duration
	shakePermille          uint32
}

var degradeLevels = [...]degradeLevel{
	{1, 0, 0, 0, 1000},
	{1.5, 2 * time.Second, 2 * time.Minute, 2 * time.Second, 1000},
	{2, 5 * time.Second, 5 * time.Minute, 5 * time.Second, 500},
	{3, 10 * time.Second, 10 * time.Minute, 10 * time.Second, 100},
}

// MaxDegrade is the heaviest degrade level.
const MaxDegrade = len(degradeLevels) - 1

// switchboard owns the switches, their persistence and the auto-degrade loop.
type switchboard struct {
	s    *Server
	file string // "" = not persisted

	mu      sync.Mutex
	sw      Switches
	base    heartbeat.Policies // heartbeat policies before degrade scaling
	auto    int                // level entered automatically
	level   int                // level in force = max(sw.Degrade, auto)
	overFor time.Duration
	calmFor time.Duration
	hooks   []func(Switches)
}

func newSwitchboard(s *Server, file string) (*switchboard, error) {
	b := &switchboard{s: s, file: file, base: *s.cfg.Policies}
	b.sw = Switches{DegradeShare: 100, AcceptRate: s.cfg.ConnAdmission.AcceptRate, MaxConns: s.cfg.ConnAdmission.MaxConns}
	if file != "" {
		raw, err := os.ReadFile(file)
		switch {
		case err == nil:
			if err := json.Unmarshal(raw, &b.sw); err != nil {
				return nil, fmt.Errorf("gateway: switches file %s: %w", file, err)
			}
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("gateway: switches file: %w", err)
		}
		if b.sw.Heartbeat != nil {
			ps, err := b.sw.Heartbeat.policies()
			if err == nil {
				err = ps.Validate()
			}
			if err != nil {
				return nil, fmt.Errorf("gateway: switches file %s: heartbeat: %w", file, err)
			}
			b.base = ps
		}
		if b.sw.DegradeShare <= 0 || b.sw.DegradeShare > 100 {
			b.sw.DegradeShare = 100
		}
		b.sw.Degrade = min(max(b.sw.Degrade, 0), MaxDegrade)
	}
	return b, nil
}

// run applies the switches at start and runs the automatic degrade loop.
func (b *switchboard) run(done <-chan struct{}) {
	b.apply(false)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				_, over := b.s.fwd.adm.Level()
				b.autoTick(over, time.Second)
			case <-done:
				return
			}
		}
	}()
}

// OnSwitches registers fn to run (on the admin goroutine) after every change,
// and once at Start. Used by feature areas with their own levers (shake).
func (s *Server) OnSwitches(fn func(Switches)) {
	s.switches.mu.Lock()
	s.switches.hooks = append(s.switches.hooks, fn)
	s.switches.mu.Unlock()
}

// Switches returns the switches in force. Goroutine-safe.
func (s *Server) Switches() Switches {
	s.switches.mu.Lock()
	defer s.switches.mu.Unlock()
	return s.switches.sw
}

// DegradeLevel returns the level in force (operator's or automatic).
func (s *Server) DegradeLevel() int {
	s.switches.mu.Lock()
	defer s.switches.mu.Unlock()
	return s.switches.level
}

// SetSwitches replaces the switches, applies them and persists them. who is
// recorded in the audit log.
func (s *Server) SetSwitches(sw Switches, who string) error {
	if sw.Degrade < 0 || sw.Degrade > MaxDegrade {
		return fmt.Errorf("degrade must be 0..%d", MaxDegrade)
	}
	if sw.DegradeShare <= 0 || sw.DegradeShare > 100 {
		return errors.New("degrade_share must be 1..100")
	}
	if sw.AcceptRate < 0 || sw.MaxConns < 0 {
		return errors.New("accept_rate and max_conns must not be negative")
	}
	var base heartbeat.Policies
	if sw.Heartbeat != nil {
		var err error
		if base, err = sw.Heartbeat.policies(); err != nil {
			return err
		}
		if err := base.Validate(); err != nil {
			return err
		}
	}
	b := s.switches
	b.mu.Lock()
	old := b.sw
	b.sw = sw
	if sw.Heartbeat != nil {
		b.base = base
	}
	b.mu.Unlock()
	s.log.Info("audit: switches changed", "by", who, "old", switchesJSON(old), "new", switchesJSON(sw))
	if err := b.persist(sw); err != nil {
		s.log.Error("cannot persist switches", "file", b.file, "err", err)
	}
	b.apply(true)
	return nil
}

func switchesJSON(sw Switches) string {
	b, _ := json.Marshal(sw)
	return string(b)
}

// persist writes the switches atomically (write, fsync, rename).
func (b *switchboard) persist(sw Switches) error {
	if b.file == "" {
		return nil
	}
	raw, _ := json.MarshalIndent(sw, "", "  ")
	tmp := fmt.Sprintf("%s.%d.tmp", b.file, os.Getpid())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(raw, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, b.file)
}

// apply puts the switches and the degrade level into force. With notify,
// live clients in the degrade share get CONFIG (and GOAWAY at level 3 with a
// redirect).
func (b *switchboard) apply(notify bool) {
	s := b.s
	b.mu.Lock()
	sw := b.sw
	level := max(sw.Degrade, b.auto)
	changed := level != b.level
	b.level = level
	base := b.base
	hooks := slices.Clone(b.hooks)
	b.mu.Unlock()

	s.connAdm.setLimits(sw.AcceptRate, sw.MaxConns)
	s.metrics.degrade.Set(float64(level))
	// Idle deadlines move for everyone; at level 0 every client hears the
	// policy (POLICY), when degraded the share hears it in CONFIG.
	s.setPolicies(base.Scale(degradeLevels[level].heartbeatScale), level == 0)
	if changed || (notify && level > 0) {
		b.broadcastConfig(level, sw)
	}
	if s.shake != nil {
		s.shake.off.Store(sw.ShakeOff)
	}
	if s.shake != nil && s.shake.cfg.Issuer != nil {
		iss := s.shake.cfg.Issuer
		if changed { // a degrade level brings its shake hint; level 0 hands back to the issuer's own
			if d := degradeLevels[level]; level > 0 {
				iss.SetDegrade(&shake.ShakeHint{MinIntervalMS: uint32(d.shakeInterval / time.Millisecond), ProbPermille: d.shakePermille, RetryAfterMS: uint32(d.shakeInterval / time.Millisecond)})
			} else {
				iss.SetDegrade(nil)
			}
		}
		if sw.ShakeSpeed != nil {
			if err := iss.SetSpeed(*sw.ShakeSpeed); err != nil {
				s.log.Warn("switch shake_speed refused", "err", err)
			}
		}
		if sw.ShakeLimit != nil {
			if err := iss.SetLimit(*sw.ShakeLimit); err != nil {
				s.log.Warn("switch shake_limit refused", "err", err)
			}
		}
	}
	for _, h := range hooks {
		h(sw)
	}
}

// inShare reports whether uid is in the first share percent of users.
func inShare(uid uint64, share int) bool {
	return share >= 100 || int((uid*0x9E3779B97F4A7C15)>>32%100) < share
}

// configFrame encodes CONFIG for a level and network.
func (b *switchboard) configFrame(level int, n pb.Network) []byte {
	d := degradeLevels[level]
	cc := &pb.ClientConfig{
		DegradeLevel:       uint32(level),
		Heartbeat:          b.s.pol.Load().ps.For(n).Proto(n),
		BackoffMinMs:       uint32(d.backoffMin / time.Millisecond),
		BackoffMaxMs:       uint32(d.backoffMax / time.Millisecond),
		ShakeMinIntervalMs: uint32(d.shakeInterval / time.Millisecond),
		ShakePermille:      d.shakePermille,
	}
	body, _ := proto.Marshal(cc)
	return codec.AppendFrame(nil, codec.CmdConfig, 0, 0, body)
}

// broadcastConfig sends CONFIG to every authenticated client in the share.
func (b *switchboard) broadcastConfig(level int, sw Switches) {
	s := b.s
	var frames [3][]byte
	for i, n := range []pb.Network{pb.Network_NETWORK_UNKNOWN, pb.Network_NETWORK_WIFI, pb.Network_NETWORK_CELLULAR} {
		frames[i] = b.configFrame(level, n)
	}
	var goAway []byte
	fleetRedirect := level == MaxDegrade && s.fl() != nil // GOAWAY 3014 with each client's node list (fleet.go)
	if level == MaxDegrade && sw.Redirect != "" && !fleetRedirect {
		body, _ := proto.Marshal(&pb.GoAway{Code: uint32(codec.CodeShutdown), ReconnectAfterMs: 0, Redirect: sw.Redirect, Message: "degraded: please use another gateway"})
		goAway = codec.AppendFrame(nil, codec.CmdGoAway, 0, 0, body)
	}
	s.eachSession(func(c *conn) {
		if !inShare(c.uid, sw.DegradeShare) {
			return
		}
		_ = s.sendAsync(c, frames[networkIndex(c.network)], nil)
		if fleetRedirect {
			if s.otherHosts() { // GOAWAY 3014 built on c's loop (the list depends on its address)
				s.redirectOnLoop(c, sw.Redirect, "degraded: please use another gateway", 0, nil)
				return
			}
			if goAway == nil && sw.Redirect != "" { // nowhere else in the fleet: the operator's address
				body, _ := proto.Marshal(&pb.GoAway{Code: uint32(codec.CodeShutdown), Redirect: sw.Redirect, Message: "degraded: please use another gateway"})
				goAway = codec.AppendFrame(nil, codec.CmdGoAway, 0, 0, body)
			}
		}
		if goAway != nil {
			_ = s.sendAsync(c, goAway, nil)
		}
	})
}

// autoTick runs once a second: while admission control reports overload for
// 10 s in a row the automatic level rises by one; after 30 s calm it falls by one.
func (b *switchboard) autoTick(overloaded bool, dt time.Duration) {
	b.mu.Lock()
	if !b.sw.AutoDegrade {
		b.overFor, b.calmFor = 0, 0
		reset := b.auto != 0
		b.auto = 0
		b.mu.Unlock()
		if reset {
			b.apply(false)
		}
		return
	}
	if overloaded {
		b.overFor += dt
		b.calmFor = 0
	} else {
		b.calmFor += dt
		b.overFor = 0
	}
	changed := false
	switch {
	case b.overFor >= 10*time.Second && b.auto < MaxDegrade:
		b.auto++
		b.overFor = 0
		changed = true
	case b.calmFor >= 30*time.Second && b.auto > 0:
		b.auto--
		b.calmFor = 0
		changed = true
	}
	auto := b.auto
	b.mu.Unlock()
	if changed {
		b.s.log.Info("audit: automatic degrade level changed", "auto_level", auto)
		b.apply(false)
	}
}

// --- admin API ---

// adminToken protects the switch endpoints: requests must carry
// "Authorization: Bearer <token>". LoadOrCreateAdminToken makes one.
func (s *Server) authorized(r *http.Request) bool { return BearerIs(r, s.cfg.AdminToken) }

// BearerIs reports whether r carries "Authorization: Bearer <want>"; an
// empty want matches nothing. The comparison is constant-time. The
// supervisor checks its admin token with it.
func BearerIs(r *http.Request, want string) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && want != "" && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(want)) == 1
}

// protectedAdmin reports whether an admin path changes or reveals switches.
func protectedAdmin(path string) bool {
	for _, p := range []string{"/switches", "/heartbeat/", "/shake/", "/workers/", "/debug/", "/fleet"} {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// requireToken wraps the admin mux: switch endpoints need the admin token.
func (s *Server) requireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if protectedAdmin(r.URL.Path) && !s.authorized(r) {
			s.connLog.Warn("audit: unauthenticated admin request refused", "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="longlink admin"`)
			http.Error(w, "admin token required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// handleSwitches serves GET and PUT /switches. PUT merges the given fields
// into the current switches.
func (s *Server) handleSwitches(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodPut, http.MethodPost, http.MethodPatch:
		sw := s.Switches()
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&sw); err != nil {
			if k, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
				http.Error(w, "unknown switch "+k+"; the switches are: "+strings.Join(SwitchKeys(), ", "), http.StatusBadRequest)
				return
			}
			http.Error(w, "bad switches JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		who := r.RemoteAddr
		if fwd := r.Header.Get("X-Longlink-Remote"); fwd != "" && (who == "" || who == "@") {
			who = fwd + " (via supervisor)"
		}
		if err := s.SetSwitches(sw, who); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	default:
		http.Error(w, "GET or PUT", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	out := struct {
		Switches
		Level int `json:"degrade_in_force"`
	}{s.Switches(), s.DegradeLevel()}
	_ = json.NewEncoder(w).Encode(out)
}

// LoadOrCreateAdminToken returns the admin token stored in path, creating a
// random one (mode 0600) if there is none.
func LoadOrCreateAdminToken(path string) (string, bool, error) {
	if raw, err := auth.ReadSecretFile(path); err == nil { // refuses a group/world-readable file
		return strings.TrimSpace(string(raw)), false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, err
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", false, err
	}
	tok := hex.EncodeToString(b)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) { // another worker won the race
			raw, err := os.ReadFile(path)
			return strings.TrimSpace(string(raw)), false, err
		}
		return "", false, err
	}
	defer f.Close()
	_, err = f.WriteString(tok + "\n")
	return tok, err == nil, err
}

// basePolicies are the heartbeat policies before degrade scaling.
func (s *Server) basePolicies() heartbeat.Policies {
	s.switches.mu.Lock()
	defer s.switches.mu.Unlock()
	return s.switches.base
}
