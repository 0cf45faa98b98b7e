package offline

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/push"
)

// Switches are the operator's levers for offline push, fleet-wide: one
// value (key "switches") in the KV bucket LONGLINK_OFFLINE_SWITCHES that
// every sender watches, set with `longlink offline switch`. Each change is
// logged by the command and, as "audit: offline switches changed" with its
// revision, author and reason, by every sender that applies it.
type Switches struct {
	// Off is the kill switch: every queued notify is acknowledged and
	// dropped (counted as dropped{reason="kill_switch"}) instead of sent.
	Off bool `json:"off"`
	// Paused providers keep their notifies queued (retried every few
	// seconds, within the retry budget) instead of sending.
	Paused []string  `json:"paused,omitempty"`
	By     string    `json:"by,omitempty"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// IsPaused reports whether platform is paused.
func (s Switches) IsPaused(platform string) bool { return slices.Contains(s.Paused, platform) }

const switchKey = "switches"

// SwitchBucketConfig is the switches bucket (a short history for the audit).
func SwitchBucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: push.SwitchBucket, Description: "longlink offline push switches", History: 16,
		Replicas: max(1, replicas), Storage: jetstream.FileStorage}
}

// SetSwitches stores s (At is set to now). It returns the new revision.
func SetSwitches(ctx context.Context, js jetstream.JetStream, replicas int, s Switches) (uint64, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, SwitchBucketConfig(replicas))
	if err != nil {
		return 0, fmt.Errorf("offline: switches bucket: %w", err)
	}
	s.At = time.Now().UTC()
	b, _ := json.Marshal(s)
	return kv.Put(ctx, switchKey, b)
}

// GetSwitches reads the current switches (zero if never set).
func GetSwitches(ctx context.Context, js jetstream.JetStream, replicas int) (Switches, error) {
	var s Switches
	kv, err := js.CreateOrUpdateKeyValue(ctx, SwitchBucketConfig(replicas))
	if err != nil {
		return s, fmt.Errorf("offline: switches bucket: %w", err)
	}
	e, err := kv.Get(ctx, switchKey)
	if err != nil {
		if err == jetstream.ErrKeyNotFound {
			return s, nil
		}
		return s, err
	}
	err = json.Unmarshal(e.Value(), &s)
	return s, err
}
