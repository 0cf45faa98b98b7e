package fcm

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"testing"
	"time"

	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/offline/standin"
)

func setup(t *testing.T) (*Client, *standin.Server) {
	t.Helper()
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	srv := standin.FCM(&k.PublicKey, "push@proj.iam.gserviceaccount.com", "proj")
	t.Cleanup(srv.Close)
	sa, _ := json.Marshal(map[string]string{"type": "service_account", "project_id": "proj", "private_key_id": "k1",
		"private_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "client_email": "push@proj.iam.gserviceaccount.com",
		"token_uri": srv.URL + "/token"})
	hc := srv.Client()
	hc.Timeout = 2 * time.Second
	c, err := New(Config{Credentials: sa, Endpoint: srv.URL, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func msg() *provider.Message {
	return &provider.Message{UID: 7, Token: "fcm-token-1", Type: 3, Version: 9, CollapseID: "ll-3", High: true, Expires: time.Now().Add(time.Hour)}
}

func TestFCMSendCachesToken(t *testing.T) {
	c, srv := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		if r := c.Send(ctx, msg()); r.Action != provider.Done {
			t.Fatalf("send: %+v", r)
		}
	}
	if srv.Exchange != 1 || srv.Count("fcm-token-1") != 3 {
		t.Fatalf("token exchanges %d (want 1, cached), sends %d", srv.Exchange, srv.Count("fcm-token-1"))
	}
	var body struct {
		Message struct {
			Data    map[string]string `json:"data"`
			Android struct {
				CollapseKey string `json:"collapse_key"`
				TTL         string `json:"ttl"`
			} `json:"android"`
		} `json:"message"`
	}
	_ = json.Unmarshal(srv.Requests()[0].Body, &body)
	if body.Message.Data["t"] != "3" || body.Message.Data["v"] != "9" || body.Message.Android.CollapseKey != "ll-3" || body.Message.Android.TTL == "" {
		t.Fatalf("message: %+v", body.Message)
	}
}

func TestFCMVerdicts(t *testing.T) {
	c, srv := setup(t)
	for _, tc := range []struct {
		f      standin.Fault
		action provider.Action
		global bool
	}{
		{standin.Fault{Status: 404, Reason: "UNREGISTERED"}, provider.DeleteToken, false},
		{standin.Fault{Status: 400, Reason: "INVALID_ARGUMENT"}, provider.DeleteToken, false},
		{standin.Fault{Status: 429, Reason: "QUOTA_EXCEEDED", RetryAfter: "30"}, provider.BackOff, true},
		{standin.Fault{Status: 503, Reason: "UNAVAILABLE"}, provider.Retry, false},
		{standin.Fault{Status: 500, Reason: "INTERNAL"}, provider.Retry, false},
		{standin.Fault{Hang: true}, provider.Retry, false},
	} {
		srv.SetFault(func(string, int) standin.Fault { return tc.f })
		ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
		r := c.Send(ctx, msg())
		cancel()
		if r.Action != tc.action || r.Global != tc.global || (tc.f.Reason != "" && r.Reason != tc.f.Reason) {
			t.Errorf("%+v: got %+v", tc.f, r)
		}
		if tc.f.RetryAfter == "30" && r.RetryAfter != 30*time.Second {
			t.Errorf("Retry-After lost: %v", r.RetryAfter)
		}
	}
}
