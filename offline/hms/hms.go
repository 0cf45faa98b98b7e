// Package hms sends notifications through Huawei Push Kit's server API
// (POST {endpoint}/v1/{app id}/messages:send), authenticated with an OAuth
// 2.0 client-credentials access token from Huawei's token endpoint (app id
// and app secret; golang.org/x/oauth2/clientcredentials caches it until
// shortly before it expires). Send is goroutine-safe.
//
// Messages are data messages ("data" is a JSON string with t/v/p/u) with
// android.collapse_key (an integer −1…100: the type modulo 100), urgency and
// ttl. Verdicts (Push Kit's result codes): 80000000 done; 80300007 (all
// tokens invalid) and 80100000 naming the token in illegal_tokens → delete
// the token; 80200001/80200003 (OAuth failure / token expired) → a new
// access token, retry; 80300008 (body too large), other 801xxxxx/803xxxxx →
// drop; 81000001 (internal error) and 5xx → retry; HTTP 429 / 503 flow
// control → back off.
package hms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/longlink/longlink/offline/provider"
)

// Defaults.
const (
	Endpoint = "https://push-api.cloud.huawei.com"
	TokenURL = "https://oauth-login.cloud.huawei.com/oauth2/v3/token"
)

// Config configures a Client.
type Config struct {
	AppID      string // the app id (OAuth client id)
	AppSecret  string // the app secret (OAuth client secret)
	Endpoint   string // default Endpoint
	TokenURL   string // default TokenURL
	HTTPClient *http.Client
}

// Client is a Push Kit client.
type Client struct {
	url string
	hc  *http.Client
	cc  *clientcredentials.Config
	ctx context.Context
	src atomic.Pointer[oauth2.TokenSource] // cc's caching source; replaced when Push Kit refuses its token
}

// Token implements oauth2.TokenSource over the current cache.
func (c *Client) Token() (*oauth2.Token, error) { return (*c.src.Load()).Token() }

func (c *Client) renew() {
	ts := c.cc.TokenSource(c.ctx)
	c.src.Store(&ts)
}

// New prepares the client.
func New(cfg Config) (*Client, error) {
	if cfg.AppID == "" || cfg.AppSecret == "" {
		return nil, errors.New("hms: app id and app secret are required")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = Endpoint
	}
	if cfg.TokenURL == "" {
		cfg.TokenURL = TokenURL
	}
	base := cfg.HTTPClient
	if base == nil {
		base = &http.Client{Timeout: 10 * time.Second}
	}
	cc := &clientcredentials.Config{ClientID: cfg.AppID, ClientSecret: cfg.AppSecret, TokenURL: cfg.TokenURL, AuthStyle: oauth2.AuthStyleInParams}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, base)
	c := &Client{url: cfg.Endpoint + "/v1/" + url.PathEscape(cfg.AppID) + "/messages:send", cc: cc, ctx: ctx}
	c.renew()
	c.hc = &http.Client{Timeout: base.Timeout, Transport: &oauth2.Transport{Source: c, Base: base.Transport}}
	return c, nil
}

// Platform implements provider.Client.
func (c *Client) Platform() string { return provider.HMS }

type android struct {
	CollapseKey int    `json:"collapse_key"`
	Urgency     string `json:"urgency"`
	TTL         string `json:"ttl,omitempty"`
}

// Body is the JSON of messages:send.
func Body(m *provider.Message, now time.Time) ([]byte, error) {
	data, err := json.Marshal(m.Data())
	if err != nil {
		return nil, err
	}
	a := android{CollapseKey: int(m.Type % 100), Urgency: "NORMAL"}
	if m.High {
		a.Urgency = "HIGH"
	}
	if !m.Expires.IsZero() {
		a.TTL = strconv.FormatInt(max(0, int64(m.Expires.Sub(now).Seconds())), 10) + "s"
	}
	return json.Marshal(map[string]any{"validate_only": false, "message": map[string]any{
		"data": string(data), "android": a, "token": []string{m.Token}}})
}

// Send implements provider.Client.
func (c *Client) Send(ctx context.Context, m *provider.Message) provider.Result {
	body, err := Body(m, time.Now())
	if err != nil || len(body) > provider.MaxPayload {
		return provider.Result{Action: provider.Drop, Reason: "80300008"}
	}
	for attempt := 0; ; attempt++ {
		r := c.send(ctx, m, body)
		if (r.Reason == "80200001" || r.Reason == "80200003") && attempt == 0 {
			c.renew() // the access token was refused: fetch a new one, once
			continue
		}
		return r
	}
}

func (c *Client) send(ctx context.Context, m *provider.Message, body []byte) provider.Result {
	a, r, ok := provider.PostJSON(ctx, c.hc, c.url, body)
	if !ok {
		return r
	}
	return Verdict(a.Status, a.RetryAfter, a.Body, m.Token)
}

// Verdict maps a Push Kit answer to an action.
func Verdict(status int, retryAfter string, body []byte, token string) provider.Result {
	r := provider.ByStatus(status, retryAfter)
	if status == http.StatusServiceUnavailable { // Push Kit's flow control
		r.Action, r.Global = provider.BackOff, true
	}
	var e struct {
		Code string `json:"code"`
		Msg  string `json:"msg"`
	}
	if json.Unmarshal(body, &e) != nil || e.Code == "" {
		return r
	}
	r.Reason = e.Code
	switch {
	case e.Code == "80000000":
		r.Action = provider.Done
	case e.Code == "80300007":
		r.Action = provider.DeleteToken
	case e.Code == "80100000": // partial success; msg is JSON naming the bad tokens
		var part struct {
			Illegal []string `json:"illegal_tokens"`
		}
		_ = json.Unmarshal([]byte(e.Msg), &part)
		r.Action = provider.Done
		for _, t := range part.Illegal {
			if t == token {
				r.Action = provider.DeleteToken
			}
		}
	case e.Code == "80200001", e.Code == "80200003":
		r.Action = provider.Retry
	case e.Code == "81000001":
		r.Action = provider.Retry
	case strings.HasPrefix(e.Code, "801"), strings.HasPrefix(e.Code, "803"):
		r.Action = provider.Drop
	}
	return r
}
