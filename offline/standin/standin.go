// Package standin runs local stand-ins for APNs, FCM and HMS in tests,
// built from the services' public documentation: they check what the real
// services check (HTTP/2 for APNs, the provider JWT's algorithm, key id,
// claims and signature; the OAuth exchanges; headers; payload limits) and
// answer with the services' documented error bodies, plus programmable
// faults (any status and reason, Retry-After, hanging).
package standin

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Fault is what the stand-in answers instead of success.
type Fault struct {
	Status     int           // HTTP status (0: no fault)
	Reason     string        // APNs reason, FCM errorCode, HMS result code
	RetryAfter string        // Retry-After header
	Hang       bool          // never answer (until the client gives up)
	Sleep      time.Duration // answer after this long (a slow service)
}

// Request is one accepted-for-processing send (faulted or not).
type Request struct {
	Token  string
	Header http.Header
	Body   []byte
	Status int
	OK     bool // answered as a success
}

// Server is one stand-in.
type Server struct {
	*httptest.Server
	mu       sync.Mutex
	reqs     []Request
	fault    func(token string, n int) Fault
	tokens   map[string]bool // OAuth access tokens issued
	Exchange int             // OAuth token exchanges (FCM, HMS)
	stop     chan struct{}
}

func newServer() *Server { return &Server{tokens: map[string]bool{}, stop: make(chan struct{})} }

// SetFault installs fn (nil: always succeed); n counts this token's sends so far.
func (s *Server) SetFault(fn func(token string, n int) Fault) {
	s.mu.Lock()
	s.fault = fn
	s.mu.Unlock()
}

// Requests returns the sends seen so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// Count returns how many sends to token were answered as a success.
func (s *Server) Count(token string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Token == token && r.OK {
			n++
		}
	}
	return n
}

// Close stops the stand-in, releasing hanging requests.
func (s *Server) Close() {
	close(s.stop)
	s.Server.Close()
}

// decide records the request and returns its fault.
func (s *Server) decide(r *http.Request, token string, body []byte) Fault {
	s.mu.Lock()
	n := 0
	for _, q := range s.reqs {
		if q.Token == token {
			n++
		}
	}
	var f Fault
	if s.fault != nil {
		f = s.fault(token, n)
	}
	st := f.Status
	if st == 0 {
		st = 200
	}
	s.reqs = append(s.reqs, Request{Token: token, Header: r.Header.Clone(), Body: body, Status: st, OK: f.Status == 0 && !f.Hang})
	s.mu.Unlock()
	if f.Sleep > 0 {
		select {
		case <-time.After(f.Sleep):
		case <-r.Context().Done():
		}
	}
	if f.Hang {
		select {
		case <-r.Context().Done():
		case <-s.stop:
		}
	}
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// APNs starts an APNs stand-in over TLS with HTTP/2 (its Client() trusts
// it). It verifies the provider token with pub (ES256, kid = keyID, iss =
// teamID, iat within the hour), the headers and the 4 KB limit.
func APNs(pub *ecdsa.PublicKey, keyID, teamID, topic string) *Server {
	s := newServer()
	h := func(w http.ResponseWriter, r *http.Request) {
		fail := func(st int, reason string) { writeJSON(w, st, map[string]any{"reason": reason}) }
		if r.ProtoMajor != 2 {
			http.Error(w, "HTTP/2 required", http.StatusHTTPVersionNotSupported)
			return
		}
		tokenStr, ok := strings.CutPrefix(r.Header.Get("authorization"), "bearer ")
		if !ok {
			fail(403, "MissingProviderToken")
			return
		}
		claims := jwt.MapClaims{}
		t, err := jwt.ParseWithClaims(tokenStr, claims, func(t *jwt.Token) (any, error) {
			if t.Header["kid"] != keyID {
				return nil, fmt.Errorf("kid %v", t.Header["kid"])
			}
			return pub, nil
		}, jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer(teamID), jwt.WithIssuedAt())
		if err != nil || !t.Valid {
			fail(403, "InvalidProviderToken")
			return
		}
		if iat, _ := claims.GetIssuedAt(); iat == nil || time.Since(iat.Time) > time.Hour {
			fail(403, "ExpiredProviderToken")
			return
		}
		if r.Header.Get("apns-topic") != topic {
			fail(400, "DeviceTokenNotForTopic")
			return
		}
		switch r.Header.Get("apns-push-type") {
		case "alert", "background":
		default:
			fail(400, "InvalidPushType")
			return
		}
		if p := r.Header.Get("apns-priority"); p != "5" && p != "10" {
			fail(400, "BadPriority")
			return
		}
		if _, err := strconv.ParseInt(r.Header.Get("apns-expiration"), 10, 64); err != nil {
			fail(400, "BadExpirationDate")
			return
		}
		if len(r.Header.Get("apns-collapse-id")) > 64 {
			fail(400, "BadCollapseId")
			return
		}
		dev := strings.TrimPrefix(r.URL.Path, "/3/device/")
		if dev == "" || strings.Trim(strings.ToLower(dev), "0123456789abcdef") != "" {
			fail(400, "BadDeviceToken")
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if len(body) > 4096 {
			fail(413, "PayloadTooLarge")
			return
		}
		var payload struct {
			APS map[string]any `json:"aps"`
		}
		if json.Unmarshal(body, &payload) != nil || payload.APS == nil {
			fail(400, "PayloadEmpty")
			return
		}
		f := s.decide(r, dev, body)
		if f.Hang {
			return
		}
		if f.Status != 0 {
			if f.RetryAfter != "" {
				w.Header().Set("retry-after", f.RetryAfter)
			}
			if f.Status == 410 {
				writeJSON(w, 410, map[string]any{"reason": f.Reason, "timestamp": time.Now().UnixMilli()})
				return
			}
			fail(f.Status, f.Reason)
			return
		}
		w.Header().Set("apns-id", "00000000-0000-0000-0000-000000000000")
		w.WriteHeader(200)
	}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(h))
	s.Server.EnableHTTP2 = true
	s.Server.StartTLS()
	return s
}

func (s *Server) issue() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Exchange++
	t := "at-" + strconv.Itoa(s.Exchange)
	s.tokens[t] = true
	return t
}

func (s *Server) bearerOK(r *http.Request) bool {
	t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	defer s.mu.Unlock()
	return ok && s.tokens[t]
}

// Revoke invalidates every access token issued so far.
func (s *Server) Revoke() {
	s.mu.Lock()
	s.tokens = map[string]bool{}
	s.mu.Unlock()
}

// FCM starts an FCM HTTP v1 stand-in: POST /token (the service account's
// token_uri: a JWT-bearer assertion signed RS256 with the account's key,
// iss = email, aud = the token URI, scope firebase.messaging, at most an
// hour) and POST /v1/projects/{project}/messages:send.
func FCM(pub *rsa.PublicKey, email, project string) *Server {
	s := newServer()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
			writeJSON(w, 400, map[string]string{"error": "unsupported_grant_type"})
			return
		}
		claims := jwt.MapClaims{}
		t, err := jwt.ParseWithClaims(r.PostForm.Get("assertion"), claims, func(*jwt.Token) (any, error) { return pub, nil },
			jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(email), jwt.WithAudience(s.URL+"/token"), jwt.WithExpirationRequired())
		iat, _ := claims.GetIssuedAt()
		exp, _ := claims.GetExpirationTime()
		if err != nil || !t.Valid || iat == nil || exp.Sub(iat.Time) > time.Hour || !strings.Contains(fmt.Sprint(claims["scope"]), "firebase.messaging") {
			writeJSON(w, 400, map[string]string{"error": "invalid_grant", "error_description": fmt.Sprint(err)})
			return
		}
		writeJSON(w, 200, map[string]any{"access_token": s.issue(), "expires_in": 3600, "token_type": "Bearer"})
	})
	mux.HandleFunc("POST /v1/projects/{project}/messages:send", func(w http.ResponseWriter, r *http.Request) {
		fail := func(st int, status, code string) {
			writeJSON(w, st, map[string]any{"error": map[string]any{"code": st, "message": code, "status": status,
				"details": []map[string]string{{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}}}})
		}
		if r.PathValue("project") != project {
			fail(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")
			return
		}
		if !s.bearerOK(r) {
			fail(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR")
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var q struct {
			Message struct {
				Token   string            `json:"token"`
				Data    map[string]string `json:"data"`
				Android struct {
					Priority string `json:"priority"`
				} `json:"android"`
			} `json:"message"`
		}
		if json.Unmarshal(body, &q) != nil || q.Message.Token == "" || len(body) > 4096 {
			fail(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
			return
		}
		if p := q.Message.Android.Priority; p != "HIGH" && p != "NORMAL" {
			fail(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
			return
		}
		f := s.decide(r, q.Message.Token, body)
		if f.Hang {
			return
		}
		if f.Status != 0 {
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			status := map[string]string{"UNREGISTERED": "NOT_FOUND", "QUOTA_EXCEEDED": "RESOURCE_EXHAUSTED", "UNAVAILABLE": "UNAVAILABLE", "INTERNAL": "INTERNAL", "INVALID_ARGUMENT": "INVALID_ARGUMENT"}[f.Reason]
			fail(f.Status, status, f.Reason)
			return
		}
		writeJSON(w, 200, map[string]string{"name": "projects/" + project + "/messages/1"})
	})
	s.Server = httptest.NewUnstartedServer(mux)
	s.Server.EnableHTTP2 = true
	s.Server.StartTLS()
	return s
}

// HMS starts a Push Kit stand-in: POST /oauth2/v3/token (client
// credentials) and POST /v1/{app}/messages:send with its result codes.
func HMS(appID, secret string) *Server {
	s := newServer()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /oauth2/v3/token", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Get("client_id") != appID || r.PostForm.Get("client_secret") != secret {
			writeJSON(w, 400, map[string]any{"error": 1101, "error_description": "invalid client"})
			return
		}
		writeJSON(w, 200, map[string]any{"access_token": s.issue(), "expires_in": 3600, "token_type": "Bearer"})
	})
	mux.HandleFunc("POST /v1/{app}/messages:send", func(w http.ResponseWriter, r *http.Request) {
		res := func(code, msg string) {
			writeJSON(w, 200, map[string]string{"code": code, "msg": msg, "requestId": "1"})
		}
		if r.PathValue("app") != appID {
			res("80300002", "no permission")
			return
		}
		if !s.bearerOK(r) {
			writeJSON(w, 401, map[string]string{"code": "80200003", "msg": "OAuth token expired"})
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if len(body) > 4096 {
			res("80300008", "message body size exceeds the default value")
			return
		}
		var q struct {
			Message struct {
				Data    string   `json:"data"`
				Token   []string `json:"token"`
				Android struct {
					CollapseKey int    `json:"collapse_key"`
					Urgency     string `json:"urgency"`
				} `json:"android"`
			} `json:"message"`
		}
		if json.Unmarshal(body, &q) != nil || len(q.Message.Token) != 1 || q.Message.Android.CollapseKey < -1 || q.Message.Android.CollapseKey > 100 {
			res("80100001", "some request parameters are abnormal")
			return
		}
		f := s.decide(r, q.Message.Token[0], body)
		if f.Hang {
			return
		}
		switch {
		case f.Status == 0:
			res("80000000", "Success")
		case f.Status == 200 && f.Reason == "80100000":
			b, _ := json.Marshal(map[string]any{"success": 0, "failure": 1, "illegal_tokens": q.Message.Token})
			res("80100000", string(b))
		case f.Status == 200:
			res(f.Reason, "fault")
		default:
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			writeJSON(w, f.Status, map[string]string{"code": f.Reason, "msg": "fault"})
		}
	})
	s.Server = httptest.NewUnstartedServer(mux)
	s.Server.EnableHTTP2 = true
	s.Server.StartTLS()
	return s
}

// Wait polls fn until it is true or d passes.
func Wait(ctx context.Context, fn func() bool) bool {
	for {
		if fn() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
}
