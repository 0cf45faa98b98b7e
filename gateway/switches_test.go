package gateway

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

func adminReq(t *testing.T, h http.Handler, method, path, body, tok string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func (w *wire) expectConfig(timeout time.Duration) *pb.ClientConfig {
	w.t.Helper()
	for {
		f, err := w.next(timeout)
		if err != nil {
			w.t.Fatalf("no CONFIG: %v", err)
		}
		if f.Cmd == codec.CmdConfig {
			var cc pb.ClientConfig
			if err := proto.Unmarshal(f.Body, &cc); err != nil {
				w.t.Fatal(err)
			}
			return &cc
		}
	}
}

func TestSwitchesNeedToken(t *testing.T) {
	s := startServer(t, func(c *Config) { c.AdminToken = "s3cret" })
	h := s.AdminHandler()
	for _, tc := range []struct{ method, path, tok string }{
		{"GET", "/switches", ""}, {"PUT", "/switches", ""}, {"GET", "/switches", "wrong"},
		{"PUT", "/heartbeat/policy", ""}, {"POST", "/shake/speed", ""},
	} {
		if w := adminReq(t, h, tc.method, tc.path, `{"degrade":1}`, tc.tok); w.Code != http.StatusUnauthorized {
			t.Errorf("%s %s with token %q: %d", tc.method, tc.path, tc.tok, w.Code)
		}
	}
	if s.Switches().Degrade != 0 {
		t.Fatal("an unauthenticated request changed a switch")
	}
	if w := adminReq(t, h, "GET", "/metrics", "", ""); w.Code != 200 {
		t.Fatalf("/metrics must stay open for scrapers: %d", w.Code)
	}
	if w := adminReq(t, h, "GET", "/switches", "", "s3cret"); w.Code != 200 || !strings.Contains(w.Body.String(), `"degrade":0`) {
		t.Fatalf("GET /switches: %d %s", w.Code, w.Body)
	}
}

func TestDegradeReachesClientsAndPersists(t *testing.T) {
	file := filepath.Join(t.TempDir(), "switches.json")
	mod := func(c *Config) { c.AdminToken = "tok"; c.SwitchesFile = file }
	s := startServer(t, mod)
	ws := make([]*wire, 4)
	for i := range ws {
		ws[i] = dialWire(t, s.Addr())
		ws[i].auth(token(t, uint64(i+1), "", time.Hour), "d")
	}
	base := s.HeartbeatPolicies().Cellular
	if w := adminReq(t, s.AdminHandler(), "PUT", "/switches", `{"degrade":2}`, "tok"); w.Code != 200 {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	for _, w := range ws { // bounded wait, not a speed claim: CI machines stall
		cc := w.expectConfig(5 * time.Second)
		if cc.DegradeLevel != 2 || cc.BackoffMinMs == 0 || cc.ShakePermille != 500 {
			t.Fatalf("CONFIG: %v", cc)
		}
		if cc.Heartbeat.GetMinIntervalS() != 2*uint32(base.Min/time.Second) {
			t.Fatalf("heartbeat not doubled: %v vs base %v", cc.Heartbeat, base)
		}
	}
	if got := s.HeartbeatPolicies().Cellular.Idle; got != 2*base.Idle {
		t.Fatalf("idle timeout %v, want %v", got, 2*base.Idle)
	}
	s.Close()

	// Restart on the same file: the switch is still in force.
	s2 := startServer(t, mod)
	if s2.Switches().Degrade != 2 || s2.DegradeLevel() != 2 {
		t.Fatalf("after restart degrade %d in force %d", s2.Switches().Degrade, s2.DegradeLevel())
	}
	w := dialWire(t, s2.Addr())
	ok := w.auth(token(t, 9, "", time.Hour), "d")
	if ok.Heartbeat.GetMinIntervalS() != 2*uint32(base.Min/time.Second) {
		t.Fatalf("new client after restart got %v", ok.Heartbeat)
	}
}

func TestDegradeShareAndRedirect(t *testing.T) {
	s := startServer(t, func(c *Config) { c.AdminToken = "tok" })
	var in, out []*wire
	for uid := uint64(1); uid <= 40 && (len(in) < 2 || len(out) < 2); uid++ {
		w := dialWire(t, s.Addr())
		w.auth(token(t, uid, "", time.Hour), "d")
		if inShare(uid, 50) {
			in = append(in, w)
		} else {
			out = append(out, w)
		}
	}
	if w := adminReq(t, s.AdminHandler(), "PUT", "/switches", `{"degrade":3,"degrade_share":50,"redirect":"10.0.0.9:7100"}`, "tok"); w.Code != 200 {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	for _, w := range in {
		if cc := w.expectConfig(time.Second); cc.DegradeLevel != 3 {
			t.Fatalf("level %d", cc.DegradeLevel)
		}
		f := w.expect(codec.CmdGoAway, time.Second)
		var g pb.GoAway
		_ = proto.Unmarshal(f.Body, &g)
		if g.Redirect != "10.0.0.9:7100" {
			t.Fatalf("goaway %v", &g)
		}
	}
	for _, w := range out { // outside the share: policy changes only move server deadlines
		if f, err := w.next(300 * time.Millisecond); err == nil {
			t.Fatalf("client outside the share got %v", f.Cmd)
		}
	}
}

func TestAutoDegrade(t *testing.T) {
	s := startServer(t, func(c *Config) { c.AdminToken = "tok" })
	if err := s.SetSwitches(Switches{AutoDegrade: true, DegradeShare: 100}, "test"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		s.switches.autoTick(true, time.Second)
	}
	if s.DegradeLevel() != 1 {
		t.Fatalf("after 10 s of overload: level %d", s.DegradeLevel())
	}
	for i := 0; i < 30; i++ {
		s.switches.autoTick(false, time.Second)
	}
	if s.DegradeLevel() != 0 {
		t.Fatalf("after 30 s calm: level %d", s.DegradeLevel())
	}
}

func TestShakeSwitches(t *testing.T) {
	env := newShakeEnv(t, 1)
	s := startServer(t, func(c *Config) { c.Shake = env.cfg; c.AdminToken = "tok" })
	w := dialWire(t, s.Addr())
	w.auth(token(t, 5, "", time.Hour), "d")
	shakeOnce := func(seq uint16) *pb.ShakeRsp {
		w.sendFrame(codec.CmdShake, seq, &pb.Shake{})
		f, err := w.next(2 * time.Second)
		for err == nil && f.Cmd != codec.CmdShakeRsp { // skip the CONFIG/POLICY a switch sends
			f, err = w.next(2 * time.Second)
		}
		if err != nil {
			t.Fatal(err)
		}
		var r pb.ShakeRsp
		if err := proto.Unmarshal(f.Body, &r); err != nil {
			t.Fatal(err)
		}
		return &r
	}
	if r := shakeOnce(1); r.Result == 2 && r.RetryAfterMs == 60000 {
		t.Fatalf("shaking looks off before the switch: %v", r)
	}
	if rec := adminReq(t, s.AdminHandler(), "PUT", "/switches", `{"shake_off":true}`, "tok"); rec.Code != 200 {
		t.Fatalf("PUT: %d %s", rec.Code, rec.Body)
	}
	if r := shakeOnce(2); r.Result != 2 || len(r.Ticket) != 0 || r.RetryAfterMs != 60000 {
		t.Fatalf("shake while switched off: %v", r)
	}
	// A degrade level asks shakers to slow down.
	if rec := adminReq(t, s.AdminHandler(), "PUT", "/switches", `{"shake_off":false,"degrade":2}`, "tok"); rec.Code != 200 {
		t.Fatalf("PUT: %d %s", rec.Code, rec.Body)
	}
	if r := shakeOnce(3); r.MinIntervalMs != 5000 || r.ProbabilityPermille != 500 {
		t.Fatalf("shake at degrade 2: %v", r)
	}
}

// GET /switches shows every switch, set or not; an unknown key is answered
// with the list of valid ones; the README lists each of them.
func TestSwitchesListedEverywhere(t *testing.T) {
	s := startServer(t, func(c *Config) { c.AdminToken = "tok" })
	h := s.AdminHandler()
	w := adminReq(t, h, "GET", "/switches", "", "tok")
	var got map[string]json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("GET /switches: %v: %s", err, w.Body)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range SwitchKeys() {
		if _, ok := got[k]; !ok {
			t.Errorf("GET /switches hides %q until it is set: %s", k, w.Body)
		}
		if !strings.Contains(string(readme), "`"+k+"`") {
			t.Errorf("README.md does not list the switch `%s`", k)
		}
	}
	w = adminReq(t, h, "PUT", "/switches", `{"bogus":1}`, "tok")
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `unknown switch "bogus"`) ||
		!strings.Contains(w.Body.String(), "degrade_share") {
		t.Fatalf("PUT bogus: %d %s", w.Code, w.Body)
	}
}

// Broadcasts (CONFIG, POLICY, redirects) skip connections that are closing:
// nothing may follow their closing ERROR.
func TestBroadcastsSkipClosingConnections(t *testing.T) {
	s := startServer(t, nil)
	open, closing, closed := &conn{uid: 1, device: "a"}, &conn{uid: 2, device: "b"}, &conn{uid: 3, device: "c"}
	closing.flags.Or(flagClosing)
	closed.closeCode.Store(uint32(codec.CodeSlowConsumer))
	for _, c := range []*conn{open, closing, closed} {
		s.sessions.add(c)
	}
	var got []uint64
	s.eachSession(func(c *conn) { got = append(got, c.uid) })
	if len(got) != 1 || got[0] != 1 {
		t.Fatalf("visited %v, want only the open connection 1", got)
	}
}
