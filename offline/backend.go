package offline

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
)

// Methods served by Backend.
const (
	MethodRegister   = "device.register"
	MethodUnregister = "device.unregister"
)

// RegisterRequest is the JSON body of device.register.
type RegisterRequest struct {
	Platform string `json:"platform"`          // apns, fcm or hms
	Token    string `json:"token"`             // the platform token
	Topic    string `json:"topic,omitempty"`   // APNs bundle id (apns-topic); default: the sender's --apns-topic
	Sandbox  bool   `json:"sandbox,omitempty"` // APNs development environment
	TTL      int64  `json:"ttl,omitempty"`     // seconds the registration lives (default 30 days, at most 180)
}

// Backend serves device.register and device.unregister in the gateway
// worker, before the logic (like shake, they never reach it): the user and
// device are the connection's authenticated ones (AUTH, or the HTTP bearer
// token), never the body's. Everything else goes to Next.
type Backend struct {
	backend.Backend
	W   *Writer
	Now func() time.Time
}

// Call implements backend.Backend.
func (b *Backend) Call(ctx context.Context, req *backend.Request) ([]byte, error) {
	switch req.Method {
	case MethodRegister:
		var q RegisterRequest
		if err := json.Unmarshal(req.Body, &q); err != nil {
			return nil, backend.Logical(codec.CodeBadRequest, "device.register: want JSON {platform, token, topic?, sandbox?, ttl?}: "+err.Error())
		}
		now := time.Now
		if b.Now != nil {
			now = b.Now
		}
		ttl := DefaultTTL
		if q.TTL < 0 || q.TTL > int64(MaxTTL/time.Second) { // compared in seconds: q.TTL*time.Second may wrap
			return nil, backend.Logical(codec.CodeBadRequest, "device.register: ttl: want 0 (30 days) to 15552000 s (180 days)")
		} else if q.TTL > 0 {
			ttl = time.Duration(q.TTL) * time.Second
		}
		t := now()
		r := Registration{Platform: q.Platform, Token: q.Token, Topic: q.Topic, Sandbox: q.Sandbox, Registered: t.Unix(), Expires: t.Add(ttl).Unix()}
		if err := r.Validate(); err != nil {
			return nil, backend.Logical(codec.CodeBadRequest, "device.register: "+err.Error())
		}
		if err := b.W.Put(ctx, req.UID, req.Device, r); err != nil {
			return nil, storeErr(err)
		}
		out, _ := json.Marshal(map[string]int64{"expires": r.Expires})
		return out, nil
	case MethodUnregister:
		if err := b.W.Delete(ctx, req.UID, req.Device); err != nil {
			return nil, storeErr(err)
		}
		return []byte(`{}`), nil
	}
	return b.Backend.Call(ctx, req)
}

func storeErr(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNoStore) {
		return backend.Unavailable(err.Error())
	}
	return err
}
