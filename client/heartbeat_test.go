package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/heartbeat"
)

func fastPolicies() heartbeat.Policies {
	p := heartbeat.Policy{Min: time.Second, Max: 2 * time.Second, Step: time.Second, Idle: 5 * time.Second}
	return heartbeat.Policies{Unknown: p, WiFi: p, Cellular: p}
}

// A client heartbeating at its learned interval is never evicted, and it
// learns up to the policy's max when nothing drops the link.
func TestAdaptiveClientNeverEvicted(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~7s")
	}
	ps := fastPolicies()
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) { c.Policies = &ps })
	var drops atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(1, time.Hour), PongTimeout: 500 * time.Millisecond,
		Smart: heartbeat.SmartConfig{FirstSuccesses: 1, ProbeSuccesses: 1},
		OnState: func(st State, _ error) {
			if st == Disconnected {
				drops.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(7 * time.Second) // > idle timeout: an unheard client would be gone
	if drops.Load() != 0 {
		t.Fatalf("client dropped %d times", drops.Load())
	}
	if iv := c.HeartbeatInterval(); iv != 2*time.Second {
		t.Fatalf("learned interval %v, want the max 2s", iv)
	}
	if _, err := c.Call(ctx, "echo", []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// A policy change reaches connected clients at once, through the API and
// through the admin endpoint.
func TestPolicyChangeReachesClients(t *testing.T) {
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) { c.AdminToken = "secret" })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cs []*Client
	for i := 0; i < 3; i++ {
		c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(uint64(10+i), time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	orig := cs[0].HeartbeatPolicy().GetMinIntervalS()
	if err := s.SetHeartbeatPolicies(s.HeartbeatPolicies().Scale(2)); err != nil {
		t.Fatal(err)
	}
	waitPolicy := func(want uint32) {
		t.Helper()
		deadline := time.Now().Add(time.Second)
		for _, c := range cs {
			for c.HeartbeatPolicy().GetMinIntervalS() != want {
				if time.Now().After(deadline) {
					t.Fatalf("client still has min %d, want %d", c.HeartbeatPolicy().GetMinIntervalS(), want)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	waitPolicy(2 * orig)
	if iv := cs[0].HeartbeatInterval(); iv < time.Duration(2*orig)*time.Second {
		t.Fatalf("learner did not follow the new policy: %v", iv)
	}

	admin := httptest.NewServer(s.AdminHandler())
	defer admin.Close()
	req, _ := http.NewRequest(http.MethodPut, admin.URL+"/heartbeat/policy", strings.NewReader(`{"scale":0.5}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("admin PUT without the token: %v %v", err, resp.Status)
	}
	req, _ = http.NewRequest(http.MethodPut, admin.URL+"/heartbeat/policy", strings.NewReader(`{"scale":0.5}`))
	req.Header.Set("Authorization", "Bearer secret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin PUT: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	waitPolicy(orig)
	req, _ = http.NewRequest(http.MethodPut, admin.URL+"/heartbeat/policy", strings.NewReader(`{"cellular":{"min":"10s","max":"5s","step":"1s","idle":"20s"}}`))
	req.Header.Set("Authorization", "Bearer secret")
	resp, _ = http.DefaultClient.Do(req)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("invalid policy accepted: %v", resp.Status)
	}
	resp.Body.Close()
}
