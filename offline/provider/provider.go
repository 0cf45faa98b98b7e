// Package provider holds what the offline sender and the platform push
// clients (offline/apns, offline/fcm, offline/hms) share: the message one
// device is sent, and the verdict a client returns, which tells the sender
// what to do next (done, delete the token, back off, retry, give up).
package provider

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/oauth2"
)

// Platforms.
const (
	APNs = "apns"
	FCM  = "fcm"
	HMS  = "hms"
)

// MaxPayload is the payload limit shared by the three services (APNs 4096
// bytes of JSON for a regular push; FCM 4096 bytes of data; HMS 4096 bytes
// of message body): a notification over it is dropped, never truncated.
const MaxPayload = 4096

// Message is one notification for one device: "type T of the user reached
// version V" (with the notify's inline payload, if any), addressed by the
// device's platform token.
type Message struct {
	UID     uint64
	Device  string
	Token   string // APNs device token (hex) or FCM/HMS registration token
	Topic   string // APNs: the app's bundle id (apns-topic); FCM/HMS: unused (per client)
	Sandbox bool   // APNs: the development environment
	Type    uint32
	Version uint64
	Payload []byte // the notify's inline payload (≤ 1 KiB), passed base64 in the data
	// CollapseID groups notifications the device shows as one (apns-collapse-id,
	// FCM collapse_key, HMS collapse_key): one per (user, type).
	CollapseID string
	High       bool      // high priority (APNs 10, FCM/HMS HIGH); else normal (5 / NORMAL)
	Expires    time.Time // when the service may stop trying (APNs apns-expiration, FCM/HMS ttl)
}

// Data is the key/value data every platform carries: t (type), v
// (version), p (payload, base64), u (uid). The app syncs on it.
func (m *Message) Data() map[string]string {
	d := map[string]string{"t": strconv.FormatUint(uint64(m.Type), 10), "v": strconv.FormatUint(m.Version, 10), "u": strconv.FormatUint(m.UID, 10)}
	if len(m.Payload) > 0 {
		d["p"] = base64.StdEncoding.EncodeToString(m.Payload)
	}
	return d
}

// Action is what the sender does after a request.
type Action int

const (
	Done        Action = iota // accepted by the service
	DeleteToken               // the token is invalid or unregistered: delete the registration
	Retry                     // a transient failure (5xx, timeout): retry within the budget
	BackOff                   // throttled (429): pause this provider for RetryAfter, then retry
	Drop                      // a permanent failure of this message (too large, bad request, auth): give up
)

var actionNames = [...]string{Done: "done", DeleteToken: "delete_token", Retry: "retry", BackOff: "back_off", Drop: "drop"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "action(" + strconv.Itoa(int(a)) + ")"
}

// Result is a client's verdict on one request.
type Result struct {
	Action     Action
	Reason     string        // the service's reason ("BadDeviceToken", "UNREGISTERED", "80300007", "timeout", …): a metric label
	Status     int           // HTTP status (0: no answer)
	RetryAfter time.Duration // BackOff/Retry: the service's Retry-After, if it gave one
	// Global: the throttling is the whole project's (FCM quota, HMS flow
	// control), so the sender pauses the provider; else only this device
	// waits (APNs 429 is per device token).
	Global bool
}

// Client sends to one platform. Send is goroutine-safe and bounded by ctx.
type Client interface {
	Platform() string
	Send(ctx context.Context, m *Message) Result
}

// RetryAfter parses an HTTP Retry-After header given in seconds (the form
// all three services use); 0 if absent or malformed.
func RetryAfter(v string) time.Duration {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// Transport verdicts shared by the clients.

// Failed is the verdict for a request that got no HTTP answer (timeout,
// connection refused, reset): transient.
func Failed(ctx context.Context, err error) Result {
	if ctx.Err() != nil {
		return Result{Action: Retry, Reason: "timeout"}
	}
	return Result{Action: Retry, Reason: "transport"}
}

// Answer is a service's HTTP answer: the status, its Retry-After header and
// the first 16 KiB of the body (error bodies are small).
type Answer struct {
	Status     int
	RetryAfter string
	Body       []byte
}

// PostJSON posts body to url as JSON with hc (whose transport adds the
// OAuth2 token, FCM and HMS) and reads the answer. ok is false when no
// answer came: r then says why (the token exchange refused, a timeout, a
// transport failure).
func PostJSON(ctx context.Context, hc *http.Client, url string, body []byte) (a Answer, r Result, ok bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return a, Result{Action: Drop, Reason: "bad_request"}, false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) { // the token exchange itself was refused
			return a, Result{Action: Retry, Reason: "oauth", Status: re.Response.StatusCode}, false
		}
		return a, Failed(ctx, err), false
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	return Answer{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"), Body: raw}, Result{}, true
}

// ByStatus is the fallback verdict for an HTTP status the service's own
// error codes did not settle.
func ByStatus(status int, retryAfter string) Result {
	r := Result{Status: status, Reason: strconv.Itoa(status), RetryAfter: RetryAfter(retryAfter)}
	switch {
	case status >= 200 && status < 300:
		r.Action = Done
	case status == 429:
		r.Action, r.Global = BackOff, true
	case status >= 500:
		r.Action = Retry
	default:
		r.Action = Drop
	}
	return r
}
