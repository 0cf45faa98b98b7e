package heartbeat

import (
	"testing"
	"time"
)

// nat simulates a NAT that drops a mapping idle for T or longer, with a fake
// clock; run drives a Smart against it like a phone's heartbeat loop would.
type nat struct {
	T        time.Duration
	now      time.Time
	failures int
	rounds   int
}

func (n *nat) clock() time.Time { return n.now }

// run performs rounds heartbeats and returns the interval in use afterwards.
func (n *nat) run(s *Smart, rounds int) time.Duration {
	for i := 0; i < rounds; i++ {
		iv := s.Interval()
		n.now = n.now.Add(iv)
		n.rounds++
		if iv < n.T {
			s.OnSuccess()
		} else {
			n.failures++
			s.OnFailure()
			n.now = n.now.Add(5 * time.Second) // reconnect
		}
	}
	return s.Interval()
}

var testPolicy = Policy{Min: 210 * time.Second, Max: 900 * time.Second, Step: 60 * time.Second, Idle: 1860 * time.Second}

func newSim(T time.Duration) (*nat, *Smart) {
	n := &nat{T: T, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return n, NewSmart(testPolicy, "cell:46000", nil, SmartConfig{Now: n.clock})
}

func TestConvergesBelowNATTimeout(t *testing.T) {
	for _, T := range []time.Duration{300 * time.Second, 333 * time.Second, 487 * time.Second, 601 * time.Second, 899 * time.Second} {
		n, s := newSim(T)
		iv := n.run(s, 150)
		if iv >= T || iv < T-s.cfg.FineStep {
			t.Errorf("T=%v: learned %v, want within %v below T", T, iv, s.cfg.FineStep)
		}
		// Bounded probing: every failure is one probe above T.
		if n.failures > 6 {
			t.Errorf("T=%v: %d failed probes", T, n.failures)
		}
		// Once learned, it holds without further failures (until the weekly re-probe).
		before := n.failures
		n.run(s, 200)
		if n.failures != before {
			t.Errorf("T=%v: %d failures after converging", T, n.failures-before)
		}
	}
}

func TestBetterThanFixedSteps(t *testing.T) {
	// A Mars-style learner ends a whole step (or its 80 s back-off) below T;
	// bisecting gets within FineStep.
	T := 505 * time.Second
	n, s := newSim(T)
	iv := n.run(s, 150)
	stepwise := testPolicy.Min + (T-testPolicy.Min-1)/testPolicy.Step*testPolicy.Step
	if iv <= stepwise {
		t.Fatalf("learned %v, no better than step-wise %v", iv, stepwise)
	}
}

func TestCapsAtPolicyMax(t *testing.T) {
	n, s := newSim(2 * time.Hour)
	if iv := n.run(s, 100); iv != testPolicy.Max {
		t.Fatalf("learned %v, want max %v", iv, testPolicy.Max)
	}
	if n.failures != 0 {
		t.Fatalf("%d failures with a generous NAT", n.failures)
	}
}

func TestRecoversWhenTimeoutShrinks(t *testing.T) {
	n, s := newSim(600 * time.Second)
	n.run(s, 150)
	n.T = 280 * time.Second // the carrier tightened its NAT
	before := n.failures
	iv := n.run(s, 150)
	if iv >= n.T || iv < n.T-s.cfg.FineStep {
		t.Fatalf("after shrink learned %v, want just below %v", iv, n.T)
	}
	if n.failures-before > 8 {
		t.Fatalf("%d failures to recover", n.failures-before)
	}
}

func TestRelearnsWhenTimeoutGrows(t *testing.T) {
	n, s := newSim(400 * time.Second)
	n.run(s, 150)
	n.T = 700 * time.Second
	// Within a day nothing changes (no failures to learn from)...
	start := n.now
	for n.now.Sub(start) < 24*time.Hour {
		n.run(s, 1)
	}
	if iv := s.Interval(); iv >= 400*time.Second {
		t.Fatalf("moved up without a re-probe: %v", iv)
	}
	// ...but after the stable period it re-probes and climbs.
	for n.now.Sub(start) < 9*24*time.Hour {
		n.run(s, 1)
	}
	if iv := s.Interval(); iv >= n.T || iv < n.T-s.cfg.FineStep {
		t.Fatalf("after growth learned %v, want just below %v", iv, n.T)
	}
}

func TestStatePerNetwork(t *testing.T) {
	store := &MemStore{}
	n := &nat{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := NewSmart(testPolicy, "wifi:home", store, SmartConfig{Now: n.clock})
	n.T = 800 * time.Second
	wifi := n.run(s, 150)
	s.SetNetwork("cell:46000")
	n.T = 300 * time.Second
	cell := n.run(s, 150)
	if cell >= 300*time.Second || wifi < 700*time.Second {
		t.Fatalf("wifi %v cell %v", wifi, cell)
	}
	s.SetNetwork("wifi:home")
	if s.Interval() != wifi {
		t.Fatalf("wifi state lost: %v, want %v", s.Interval(), wifi)
	}
	// Persisted: a new Smart on the same store resumes where it was.
	s2 := NewSmart(testPolicy, "cell:46000", store, SmartConfig{Now: n.clock})
	if s2.Interval() != cell {
		t.Fatalf("cell state not persisted: %v, want %v", s2.Interval(), cell)
	}
}

func TestForegroundUsesMinimumAndLearnsNothing(t *testing.T) {
	n, s := newSim(600 * time.Second)
	n.run(s, 150)
	learned := s.State()
	s.SetForeground(true)
	if s.Interval() != testPolicy.Min {
		t.Fatalf("foreground interval %v", s.Interval())
	}
	n.run(s, 50)
	s.SetForeground(false)
	if s.State() != learned {
		t.Fatal("foreground heartbeats changed the learned state")
	}
}

func TestServerPolicyClamps(t *testing.T) {
	n, s := newSim(2 * time.Hour)
	n.run(s, 100)
	s.SetPolicy(Policy{Min: 60 * time.Second, Max: 300 * time.Second, Step: 30 * time.Second, Idle: 660 * time.Second})
	if s.Interval() != 300*time.Second {
		t.Fatalf("not clamped to the new max: %v", s.Interval())
	}
	s.SetPolicy(Policy{Min: 1200 * time.Second, Max: 1500 * time.Second, Step: 60 * time.Second, Idle: 3060 * time.Second})
	if s.Interval() < 1200*time.Second {
		t.Fatalf("below the new min: %v", s.Interval())
	}
}

func TestPolicyValidate(t *testing.T) {
	if err := DefaultPolicies().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Policy{Min: 60 * time.Second, Max: 300 * time.Second, Idle: 400 * time.Second}
	if bad.Validate() == nil {
		t.Fatal("idle < 2*max accepted")
	}
	ps := DefaultPolicies().Scale(2)
	if ps.Cellular.Min != 2*DefaultPolicies().Cellular.Min || ps.Validate() != nil {
		t.Fatal("scale")
	}
}
