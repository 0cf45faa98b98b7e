package loadtest

import (
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/gateway"
)

func TestGatewayOverloadSteps(t *testing.T) {
	// 4 forwarding goroutines and 5 ms calls: about 800 calls/s of capacity.
	gcfg := gateway.Config{PoolSize: 4}
	gcfg.Admission.Priorities = gateway.DefaultPriorities()
	gcfg.Admission.Priorities["sleep.hi"] = 1
	addr, admin, keys := testGatewayCfg(t, gcfg)
	// Steps switch on the tool's 1-second tick, late on a loaded host, and
	// the admission sheds the low lane for a few seconds after the
	// overload (readmitting 10 %, 20 %, 40 %… more per 1 s window): 14 s of
	// steady state leave the recovery step ~9 s (CI once saw sleep.lo still
	// all shed 3.5 s in).
	cfg := small(400, 14*time.Second, "overload")
	cfg.Target, cfg.Admin, cfg.Keys = addr, admin, keys
	cfg.CallBody = "5"
	cfg.Settle = 500 * time.Millisecond
	var err error
	if cfg.Mix, err = parseMix("sleep.hi:1,sleep.lo:3"); err != nil {
		t.Fatal(err)
	}
	if cfg.Steps, err = parseSteps("unloaded:1500ms:200,overload:2s:3000,recovery:10s:200"); err != nil {
		t.Fatal(err)
	}
	r := run(t, cfg)
	t.Log("\n" + summary(r))
	if r.Failure != "" {
		t.Fatalf("%s (errors %v)", r.Failure, r.Errors)
	}
	o := r.Overload
	if o == nil || len(o.Steps) != 3 {
		t.Fatalf("overload report %+v", o)
	}
	for _, st := range o.Steps {
		for _, m := range []string{"sleep.hi", "sleep.lo"} {
			ms := st.Methods[m]
			if ms == nil || ms.SentPerS <= 0 {
				t.Fatalf("step %s method %s: %+v", st.Name, m, ms)
			}
			if ms.UsersServed+ms.UsersShed+ms.UsersMixed != ms.Users {
				t.Errorf("step %s %s: users %d != %d+%d+%d", st.Name, m, ms.Users, ms.UsersServed, ms.UsersShed, ms.UsersMixed)
			}
		}
		if st.FromS >= st.ToS {
			t.Errorf("step %s from %.1f to %.1f", st.Name, st.FromS, st.ToS)
		}
	}
	// Answers are counted when they arrive (a step's calls may be answered
	// in the next); over the whole run none is answered twice.
	for _, m := range []string{"sleep.hi", "sleep.lo"} {
		p := "ov:" + m + ":"
		if c := r.Counters; c[p+"ok"]+c[p+"err"]+c[p+"shed"]+c[p+"timeout"] > c[p+"sent"] || c[p+"ok"] == 0 {
			t.Errorf("%s: sent %d, ok %d err %d shed %d timeout %d", m, c[p+"sent"], c[p+"ok"], c[p+"err"], c[p+"shed"], c[p+"timeout"])
		}
	}
	if o.Steps[0].Methods["sleep.hi"].P99 <= 0 {
		t.Errorf("unloaded: %+v", o.Steps[0].Methods["sleep.hi"])
	}
	if o.Steps[2].ShedStoppedS == nil || o.Steps[1].ShedStoppedS != nil {
		t.Errorf("recovery figures on the wrong steps: %v %v", o.Steps[2].ShedStoppedS, o.Steps[1].ShedStoppedS)
	}
	if len(r.Series) == 0 || r.Series[len(r.Series)-1].Methods["sleep.lo"].OKPerS == 0 && r.Series[len(r.Series)-2].Methods["sleep.lo"].OKPerS == 0 {
		t.Errorf("per-method series missing")
	}
	if !strings.Contains(summary(r), "step overload") {
		t.Error("summary lacks the steps")
	}
}

func TestMixAndStepsParse(t *testing.T) {
	m, err := parseMix("a:1, b:3,c")
	if err != nil || len(m) != 3 || m[1].Weight != 3 || m[2].Weight != 1 {
		t.Errorf("mix %v %v", m, err)
	}
	for _, bad := range []string{"", "a:0", ":2", "a:x"} {
		if _, err := parseMix(bad); err == nil {
			t.Errorf("mix %q accepted", bad)
		}
	}
	s, err := parseSteps("u:15s:1000,o:20s:9000/s")
	if err != nil || len(s) != 2 || s[1].Dur != 20*time.Second || s[1].Rate != 9000 {
		t.Errorf("steps %v %v", s, err)
	}
	for _, bad := range []string{"u:15s", "u:0s:5", "u:1s:x"} {
		if _, err := parseSteps(bad); err == nil {
			t.Errorf("steps %q accepted", bad)
		}
	}
}
