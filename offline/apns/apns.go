// Package apns sends notifications through the Apple Push Notification
// service over HTTP/2 with token-based authentication: an ES256 JWT signed
// with the team's .p8 key (header kid = key id; claims iss = team id, iat),
// reused for 40 minutes and refreshed before Apple's one-hour limit (Apple
// refuses tokens refreshed more often than every 20 minutes, so it is not
// made per request). Send is goroutine-safe.
//
// Verdicts (Apple's "Handling notification responses from APNs"): 200 done;
// 410 Unregistered and 400 BadDeviceToken / DeviceTokenNotForTopic → delete
// the token; 403 ExpiredProviderToken / InvalidProviderToken → a new JWT,
// retry; 429 TooManyRequests → back off; 500/503 → retry; 413
// PayloadTooLarge and other 4xx → drop.
package apns

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/longlink/longlink/offline/provider"
)

// Endpoints (the defaults; tests point Endpoint at a local stand-in).
const (
	Production  = "https://api.push.apple.com"
	Development = "https://api.sandbox.push.apple.com"
)

// TokenLifetime is how long one provider JWT is reused (Apple: at most one
// hour, refreshed no more often than every 20 minutes).
const TokenLifetime = 40 * time.Minute

// Config configures a Client.
type Config struct {
	KeyFile  string            // the .p8 file (PKCS#8 PEM of a P-256 key)
	Key      *ecdsa.PrivateKey // instead of KeyFile
	KeyID    string            // the key's 10-character id (JWT kid)
	TeamID   string            // the team id (JWT iss)
	Topic    string            // default apns-topic (the app's bundle id) when a registration has none
	Endpoint string            // default Production; Development for sandbox registrations is SandboxEndpoint
	// SandboxEndpoint serves registrations marked sandbox (default Development).
	SandboxEndpoint string
	PushType        string       // apns-push-type (default "alert")
	HTTPClient      *http.Client // default: an HTTP/2-only client with a 10 s timeout
	Now             func() time.Time
}

// Client is an APNs client.
type Client struct {
	cfg Config
	hc  *http.Client

	mu     sync.Mutex
	bearer string
	iat    time.Time
}

// New checks cfg and loads the key.
func New(cfg Config) (*Client, error) {
	if cfg.Key == nil {
		if cfg.KeyFile == "" {
			return nil, errors.New("apns: a .p8 key file is required")
		}
		raw, err := os.ReadFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("apns: key: %w", err)
		}
		if cfg.Key, err = ParseKey(raw); err != nil {
			return nil, err
		}
	}
	if cfg.KeyID == "" || cfg.TeamID == "" {
		return nil, errors.New("apns: key id and team id are required")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = Production
	}
	if cfg.SandboxEndpoint == "" {
		cfg.SandboxEndpoint = Development
	}
	if cfg.PushType == "" {
		cfg.PushType = "alert"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Client{cfg: cfg, hc: cfg.HTTPClient}
	if c.hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP2(true) // APNs speaks HTTP/2 only
		c.hc = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	return c, nil
}

// ParseKey reads a .p8 key: PKCS#8 PEM holding an ECDSA P-256 key.
func ParseKey(raw []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, errors.New("apns: key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("apns: key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve.Params().Name != "P-256" {
		return nil, errors.New("apns: key: not an ECDSA P-256 key")
	}
	return ek, nil
}

// Platform implements provider.Client.
func (c *Client) Platform() string { return provider.APNs }

// token returns the provider JWT, signing a new one when the current is
// older than TokenLifetime or force is set (Apple said it expired).
func (c *Client) token(force bool, stale string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if c.bearer != "" && now.Sub(c.iat) < TokenLifetime && !(force && c.bearer == stale) {
		return c.bearer, nil
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": c.cfg.TeamID, "iat": now.Unix()})
	t.Header["kid"] = c.cfg.KeyID
	s, err := t.SignedString(c.cfg.Key)
	if err != nil {
		return "", fmt.Errorf("apns: signing the provider token: %w", err)
	}
	c.bearer, c.iat = s, now
	return s, nil
}

type aps struct {
	Alert          any `json:"alert,omitempty"`
	Sound          any `json:"sound,omitempty"`
	MutableContent int `json:"mutable-content,omitempty"`
	Content        int `json:"content-available,omitempty"`
}

// Body is the JSON APNs receives: an alert the app's notification service
// extension localises (loc-key "LL_TYPE_<type>"), and the sync data under
// "ll". With push type "background" it is a silent content-available push.
func (c *Client) Body(m *provider.Message) ([]byte, error) {
	a := aps{}
	if c.cfg.PushType == "background" {
		a.Content = 1
	} else {
		a.Alert = map[string]string{"loc-key": "LL_TYPE_" + strconv.FormatUint(uint64(m.Type), 10)}
		a.Sound = "default"
		a.MutableContent = 1
	}
	return json.Marshal(map[string]any{"aps": a, "ll": m.Data()})
}

// Send implements provider.Client.
func (c *Client) Send(ctx context.Context, m *provider.Message) provider.Result {
	body, err := c.Body(m)
	if err != nil || len(body) > provider.MaxPayload {
		return provider.Result{Action: provider.Drop, Reason: "PayloadTooLarge"}
	}
	var stale string
	for attempt := 0; ; attempt++ {
		tok, err := c.token(attempt > 0, stale)
		if err != nil {
			return provider.Result{Action: provider.Drop, Reason: "signing"}
		}
		r := c.send(ctx, m, body, tok)
		if (r.Reason == "ExpiredProviderToken" || r.Reason == "InvalidProviderToken") && attempt == 0 {
			stale = tok
			continue // one retry with a fresh token
		}
		return r
	}
}

func (c *Client) send(ctx context.Context, m *provider.Message, body []byte, tok string) provider.Result {
	base := c.cfg.Endpoint
	if m.Sandbox {
		base = c.cfg.SandboxEndpoint
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/3/device/"+m.Token, bytes.NewReader(body))
	if err != nil {
		return provider.Result{Action: provider.Drop, Reason: "bad_request"}
	}
	topic := m.Topic
	if topic == "" {
		topic = c.cfg.Topic
	}
	h := req.Header
	h.Set("authorization", "bearer "+tok)
	h.Set("apns-topic", topic)
	h.Set("apns-push-type", c.cfg.PushType)
	prio := "5"
	if m.High && c.cfg.PushType != "background" { // Apple: background pushes must use 5
		prio = "10"
	}
	h.Set("apns-priority", prio)
	exp := "0"
	if !m.Expires.IsZero() {
		exp = strconv.FormatInt(m.Expires.Unix(), 10)
	}
	h.Set("apns-expiration", exp)
	if id := m.CollapseID; id != "" && len(id) <= 64 {
		h.Set("apns-collapse-id", id)
	}
	h.Set("content-type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return provider.Failed(ctx, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusOK {
		return provider.Result{Action: provider.Done, Status: 200}
	}
	var e struct {
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal(raw, &e)
	r := provider.ByStatus(resp.StatusCode, resp.Header.Get("retry-after"))
	if e.Reason != "" {
		r.Reason = e.Reason
	}
	switch {
	case resp.StatusCode == http.StatusGone, e.Reason == "BadDeviceToken", e.Reason == "DeviceTokenNotForTopic", e.Reason == "Unregistered":
		r.Action = provider.DeleteToken
	case e.Reason == "TooManyRequests", resp.StatusCode == http.StatusTooManyRequests:
		r.Action, r.Global = provider.BackOff, false // per device token, not the whole topic
	}
	return r
}
