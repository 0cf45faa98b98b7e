// Package fcm sends notifications through Firebase Cloud Messaging's HTTP
// v1 API (POST {endpoint}/v1/projects/{project}/messages:send). It
// authenticates with a service account: an RS256 JWT assertion exchanged at
// the account's token_uri for an OAuth2 access token (golang.org/x/oauth2/jwt),
// cached until shortly before it expires. Send is goroutine-safe.
//
// Messages are data messages (the app builds the notification from t/v/p and
// syncs) with android.collapse_key = the message's collapse id, priority
// HIGH or NORMAL, and ttl. Verdicts (FCM's ErrorCode reference): 200 done;
// UNREGISTERED (404), INVALID_ARGUMENT (400; the payload is checked here
// first, so what remains is the token), SENDER_ID_MISMATCH (403) → delete
// the token; QUOTA_EXCEEDED / 429 → back off (Retry-After); UNAVAILABLE
// (503), INTERNAL (500) → retry; THIRD_PARTY_AUTH_ERROR and the rest → drop.
package fcm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/longlink/longlink/offline/provider"
)

// Defaults.
const (
	Endpoint = "https://fcm.googleapis.com"
	TokenURI = "https://oauth2.googleapis.com/token"
	Scope    = "https://www.googleapis.com/auth/firebase.messaging"
)

// Config configures a Client.
type Config struct {
	// CredentialsFile is the service account's JSON key (type
	// "service_account": project_id, client_email, private_key, token_uri).
	CredentialsFile string
	Credentials     []byte // instead of the file
	ProjectID       string // default: the key's project_id
	Endpoint        string // default Endpoint
	TokenURI        string // default: the key's token_uri, else TokenURI
	HTTPClient      *http.Client
}

// Client is an FCM HTTP v1 client.
type Client struct {
	url string
	hc  *http.Client
}

type serviceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

// New reads the service account and prepares the token source.
func New(cfg Config) (*Client, error) {
	raw := cfg.Credentials
	if raw == nil {
		if cfg.CredentialsFile == "" {
			return nil, errors.New("fcm: a service account key file is required")
		}
		var err error
		if raw, err = os.ReadFile(cfg.CredentialsFile); err != nil {
			return nil, fmt.Errorf("fcm: %w", err)
		}
	}
	var sa serviceAccount
	if err := json.Unmarshal(raw, &sa); err != nil {
		return nil, fmt.Errorf("fcm: service account key: %w", err)
	}
	if sa.Type != "service_account" || sa.ClientEmail == "" || sa.PrivateKey == "" {
		return nil, errors.New("fcm: service account key: want type service_account with client_email and private_key")
	}
	if cfg.ProjectID == "" {
		cfg.ProjectID = sa.ProjectID
	}
	if cfg.ProjectID == "" {
		return nil, errors.New("fcm: no project id")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = Endpoint
	}
	if cfg.TokenURI == "" {
		cfg.TokenURI = sa.TokenURI
	}
	if cfg.TokenURI == "" {
		cfg.TokenURI = TokenURI
	}
	base := cfg.HTTPClient
	if base == nil {
		base = &http.Client{Timeout: 10 * time.Second}
	}
	jc := &jwt.Config{Email: sa.ClientEmail, PrivateKey: []byte(sa.PrivateKey), PrivateKeyID: sa.PrivateKeyID,
		Scopes: []string{Scope}, TokenURL: cfg.TokenURI}
	// The token source caches the access token (ReuseTokenSource) and asks
	// for a new one shortly before it expires.
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, base)
	hc := &http.Client{Timeout: base.Timeout, Transport: &oauth2.Transport{Source: jc.TokenSource(ctx), Base: base.Transport}}
	return &Client{url: cfg.Endpoint + "/v1/projects/" + cfg.ProjectID + "/messages:send", hc: hc}, nil
}

// Platform implements provider.Client.
func (c *Client) Platform() string { return provider.FCM }

type android struct {
	CollapseKey string `json:"collapse_key,omitempty"`
	Priority    string `json:"priority"`
	TTL         string `json:"ttl,omitempty"`
}

type message struct {
	Token   string            `json:"token"`
	Data    map[string]string `json:"data"`
	Android android           `json:"android"`
}

// Body is the JSON of messages:send.
func Body(m *provider.Message, now time.Time) ([]byte, error) {
	a := android{CollapseKey: m.CollapseID, Priority: "NORMAL"}
	if m.High {
		a.Priority = "HIGH"
	}
	if !m.Expires.IsZero() {
		a.TTL = strconv.FormatInt(max(0, int64(m.Expires.Sub(now).Seconds())), 10) + "s"
	}
	return json.Marshal(map[string]any{"message": message{Token: m.Token, Data: m.Data(), Android: a}})
}

// Send implements provider.Client.
func (c *Client) Send(ctx context.Context, m *provider.Message) provider.Result {
	body, err := Body(m, time.Now())
	if err != nil || len(body) > provider.MaxPayload {
		return provider.Result{Action: provider.Drop, Reason: "payload_too_large"}
	}
	a, r, ok := provider.PostJSON(ctx, c.hc, c.url, body)
	if !ok {
		return r
	}
	if a.Status == http.StatusOK {
		return provider.Result{Action: provider.Done, Status: 200}
	}
	return Verdict(a.Status, a.RetryAfter, a.Body)
}

// Verdict maps an FCM error answer to an action.
func Verdict(status int, retryAfter string, body []byte) provider.Result {
	var e struct {
		Error struct {
			Status  string `json:"status"`
			Details []struct {
				Type      string `json:"@type"`
				ErrorCode string `json:"errorCode"`
			} `json:"details"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	code := e.Error.Status
	for _, d := range e.Error.Details {
		if d.ErrorCode != "" {
			code = d.ErrorCode
		}
	}
	r := provider.ByStatus(status, retryAfter)
	if code != "" {
		r.Reason = code
	}
	switch code {
	case "UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "NOT_FOUND":
		r.Action = provider.DeleteToken
	case "QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED":
		r.Action, r.Global = provider.BackOff, true
	case "UNAVAILABLE", "INTERNAL":
		r.Action = provider.Retry
	case "THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED", "UNAUTHENTICATED":
		r.Action = provider.Drop
	}
	return r
}
