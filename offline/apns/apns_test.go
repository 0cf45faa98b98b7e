package apns

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/offline/standin"
)

const tok = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"

func setup(t *testing.T) (*Client, *standin.Server, *time.Time, *sync.Mutex) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	p8 := filepath.Join(t.TempDir(), "AuthKey_ABC123DEFG.p8")
	if err := os.WriteFile(p8, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := standin.APNs(&k.PublicKey, "ABC123DEFG", "TEAM123456", "com.example.app")
	t.Cleanup(srv.Close)
	var mu sync.Mutex
	now := time.Now().Add(-TokenLifetime - time.Minute) // the stand-in checks iat against its own clock
	hc := srv.Client()
	hc.Timeout = 2 * time.Second
	c, err := New(Config{KeyFile: p8, KeyID: "ABC123DEFG", TeamID: "TEAM123456", Topic: "com.example.app", Endpoint: srv.URL,
		HTTPClient: hc, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv, &now, &mu
}

func msg() *provider.Message {
	return &provider.Message{UID: 7, Device: "phone", Token: tok, Type: 3, Version: 9, CollapseID: "ll-3", High: true, Expires: time.Now().Add(time.Hour)}
}

func TestAPNsSendAndTokenRefresh(t *testing.T) {
	c, srv, now, mu := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if r := c.Send(ctx, msg()); r.Action != provider.Done {
			t.Fatalf("send: %+v", r)
		}
	}
	mu.Lock()
	*now = time.Now()
	mu.Unlock()
	if r := c.Send(ctx, msg()); r.Action != provider.Done {
		t.Fatalf("send after refresh: %+v", r)
	}
	reqs := srv.Requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests", len(reqs))
	}
	a0, a1, a2 := reqs[0].Header.Get("authorization"), reqs[1].Header.Get("authorization"), reqs[2].Header.Get("authorization")
	if a0 != a1 || a1 == a2 {
		t.Fatalf("the provider token must be reused within its lifetime and renewed after it")
	}
	h := reqs[0].Header
	for k, want := range map[string]string{"apns-topic": "com.example.app", "apns-push-type": "alert", "apns-priority": "10", "apns-collapse-id": "ll-3"} {
		if h.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, h.Get(k), want)
		}
	}
}

func TestAPNsVerdicts(t *testing.T) {
	c, srv, _, _ := setup(t)
	for _, tc := range []struct {
		f      standin.Fault
		action provider.Action
		reason string
	}{
		{standin.Fault{Status: 410, Reason: "Unregistered"}, provider.DeleteToken, "Unregistered"},
		{standin.Fault{Status: 400, Reason: "BadDeviceToken"}, provider.DeleteToken, "BadDeviceToken"},
		{standin.Fault{Status: 429, Reason: "TooManyRequests"}, provider.BackOff, "TooManyRequests"},
		{standin.Fault{Status: 500, Reason: "InternalServerError"}, provider.Retry, "InternalServerError"},
		{standin.Fault{Status: 503, Reason: "ServiceUnavailable", RetryAfter: "7"}, provider.Retry, "ServiceUnavailable"},
		{standin.Fault{Status: 400, Reason: "BadTopic"}, provider.Drop, "BadTopic"},
		{standin.Fault{Hang: true}, provider.Retry, "timeout"},
	} {
		srv.SetFault(func(string, int) standin.Fault { return tc.f })
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		r := c.Send(ctx, msg())
		cancel()
		if r.Action != tc.action || r.Reason != tc.reason {
			t.Errorf("%+v: got %v %q, want %v %q", tc.f, r.Action, r.Reason, tc.action, tc.reason)
		}
		if tc.f.RetryAfter == "7" && r.RetryAfter != 7*time.Second {
			t.Errorf("Retry-After not passed on: %v", r.RetryAfter)
		}
	}
	// Apple says the provider token expired: one retry with a new one.
	before := len(srv.Requests())
	srv.SetFault(func(_ string, n int) standin.Fault {
		if n == before { // the first request of this phase
			return standin.Fault{Status: 403, Reason: "ExpiredProviderToken"}
		}
		return standin.Fault{}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r := c.Send(ctx, msg()); r.Action != provider.Done {
		t.Fatalf("after ExpiredProviderToken: %+v", r)
	}
	reqs := srv.Requests()[before:]
	if len(reqs) != 2 || reqs[0].Header.Get("authorization") == reqs[1].Header.Get("authorization") {
		t.Fatalf("want a retry with a fresh token, got %d requests", len(reqs))
	}
	// Over 4 KB: dropped before any request.
	m := msg()
	m.Payload = make([]byte, 3500)
	n := len(srv.Requests())
	if r := c.Send(ctx, m); r.Action != provider.Drop || len(srv.Requests()) != n {
		t.Fatalf("oversized: %+v", r)
	}
}
