package client

import (
	"context"
	"testing"
	"time"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/shake/shaketest/live"
)

// The SDK's Shake and Open against a real gateway serving an event.
func TestShakeAndOpen(t *testing.T) {
	e := live.Serve(t, 50, "sdk-test")
	s := startGateway(t, "127.0.0.1:0", func(c *gateway.Config) {
		c.Shake = &gateway.ShakeConfig{Issuer: e.Issuer, Opener: e.Opener, Verifier: e.Verifier}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Addr: s.Addr(), Token: tok(77, time.Hour), Device: "d"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	shakeAndOpen(t, ctx, c)
}

// shakeAndOpen shakes until c wins a ticket and opens it: it must pay.
func shakeAndOpen(t *testing.T, ctx context.Context, c *Client) {
	t.Helper()
	for {
		r, err := c.Shake(ctx)
		if err != nil {
			t.Fatalf("shake: %v", err)
		}
		if r.Result != 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		o, err := c.Open(ctx, r.Ticket)
		if err != nil || o.Code != 0 || o.AmountFen == 0 {
			t.Fatalf("open: %v %v", o, err)
		}
		return
	}
}
