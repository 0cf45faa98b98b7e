package hms

import (
	"context"
	"testing"
	"time"

	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/offline/standin"
)

func setup(t *testing.T) (*Client, *standin.Server) {
	t.Helper()
	srv := standin.HMS("10086", "s3cret")
	t.Cleanup(srv.Close)
	hc := srv.Client()
	hc.Timeout = 2 * time.Second
	c, err := New(Config{AppID: "10086", AppSecret: "s3cret", Endpoint: srv.URL, TokenURL: srv.URL + "/oauth2/v3/token", HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func msg() *provider.Message {
	return &provider.Message{UID: 7, Token: "hms-token-1", Type: 103, Version: 9, High: true, Expires: time.Now().Add(time.Hour)}
}

func TestHMSSendAndTokenRenewal(t *testing.T) {
	c, srv := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if r := c.Send(ctx, msg()); r.Action != provider.Done {
			t.Fatalf("send: %+v", r)
		}
	}
	if srv.Exchange != 1 {
		t.Fatalf("token exchanges %d, want 1 (cached)", srv.Exchange)
	}
	srv.Revoke() // Push Kit answers 80200003: a new token, then success
	if r := c.Send(ctx, msg()); r.Action != provider.Done || srv.Exchange != 2 {
		t.Fatalf("after revocation: %+v, exchanges %d", r, srv.Exchange)
	}
}

func TestHMSVerdicts(t *testing.T) {
	c, srv := setup(t)
	for _, tc := range []struct {
		f      standin.Fault
		action provider.Action
	}{
		{standin.Fault{Status: 200, Reason: "80300007"}, provider.DeleteToken},
		{standin.Fault{Status: 200, Reason: "80100000"}, provider.DeleteToken},
		{standin.Fault{Status: 200, Reason: "81000001"}, provider.Retry},
		{standin.Fault{Status: 200, Reason: "80300008"}, provider.Drop},
		{standin.Fault{Status: 503, Reason: "80000001"}, provider.BackOff},
		{standin.Fault{Status: 500, Reason: "81000001"}, provider.Retry},
		{standin.Fault{Hang: true}, provider.Retry},
	} {
		srv.SetFault(func(string, int) standin.Fault { return tc.f })
		ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
		r := c.Send(ctx, msg())
		cancel()
		if r.Action != tc.action {
			t.Errorf("%+v: got %+v", tc.f, r)
		}
	}
}
