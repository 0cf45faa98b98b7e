package push

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Device queries: which devices of a user have a live connection now. The
// offline sender (offline/) asks before it sends a provider notification,
// so a device that came back within the delay is not notified twice. The
// router knows users per node, not devices: it asks the nodes that hold the
// user (one request each) and merges their answers. Nothing is stored: the
// gateway answers from its session table.
//
// Wire: request = uid u64 (big-endian); reply = repeated (device_len u8 |
// device). A node's subject is its node subject + devicesSuffix.
const (
	SubjectDevices = "longlink.push.devices" // offline sender → router (queue group), request/reply
	devicesSuffix  = ".devices"
)

// DeviceSink is what a Sink implements to answer device queries.
type DeviceSink interface {
	// Devices calls fn for each connection of uid held here (its device
	// id, "" for none). fn must not block.
	Devices(uid uint64, fn func(device string))
}

// OfflineHook hears every notify the router routes, and whether the user
// had a live connection anywhere, so notifies for devices without one can
// go to the offline path (offline.Enqueuer). Notified runs on the caller of
// Notify/Multicast and must not block; payload is only valid during the call.
type OfflineHook interface {
	Notified(uid uint64, device string, typ uint32, version uint64, payload []byte, online bool)
}

// OfflinePresence is implemented by an OfflineHook that wants to hear, on
// the router's presence goroutine, when a connection of a user closes
// (Left) and when the registry lost track of a node's users (Reset: node
// dropped or replaced by a snapshot). Neither may block.
type OfflinePresence interface {
	Left(uid uint64)
	Reset()
}

type offlineHook struct {
	OfflineHook
	pres OfflinePresence // nil if the hook does not implement it
}

// SetOffline installs (nil: removes) the offline hook. Goroutine-safe.
func (r *Router) SetOffline(h OfflineHook) {
	if h == nil {
		r.offline.Store(nil)
		return
	}
	p, _ := h.(OfflinePresence)
	r.offline.Store(&offlineHook{h, p})
}

// offlineLeft and offlineReset tell the hook (presence goroutine).
func (r *Router) offlineLeft(uid uint64) {
	if h := r.offline.Load(); h != nil && h.pres != nil {
		h.pres.Left(uid)
	}
}

func (r *Router) offlineReset() {
	if h := r.offline.Load(); h != nil && h.pres != nil {
		h.pres.Reset()
	}
}

func answerDevices(m *nats.Msg, ds DeviceSink) {
	if len(m.Data) != 8 || m.Reply == "" {
		return
	}
	var out []byte
	ds.Devices(binary.BigEndian.Uint64(m.Data), func(d string) {
		if len(d) > maxDevice || len(out)+1+len(d) > 60<<10 {
			return
		}
		out = append(out, byte(len(d)))
		out = append(out, d...)
	})
	_ = m.Respond(out)
}

func parseDevices(b []byte, into []string) ([]string, error) {
	for len(b) > 0 {
		n := int(b[0])
		if len(b) < 1+n {
			return into, errShort
		}
		into = append(into, string(b[1:1+n]))
		b = b[1+n:]
	}
	return into, nil
}

// Devices returns the devices of uid connected anywhere now (duplicates
// possible, one per connection). An error means a node did not answer: the
// list may be incomplete.
func (r *Router) Devices(ctx context.Context, uid uint64) ([]string, error) {
	var nodes [8]uint16
	found := r.reg.Lookup(uid, nodes[:0])
	if len(found) == 0 {
		return nil, nil
	}
	var q [8]byte
	binary.BigEndian.PutUint64(q[:], uid)
	var out []string
	var errs []error
	for _, n := range found {
		r.nodesMu.RLock()
		var subj string
		if int(n) < len(r.byIdx) {
			subj = r.byIdx[n].subject
		}
		r.nodesMu.RUnlock()
		if subj == "" {
			continue
		}
		m, err := r.nc.RequestWithContext(ctx, subj+devicesSuffix, q[:])
		if err != nil {
			errs = append(errs, fmt.Errorf("push: devices of %d on %s: %w", uid, subj, err))
			continue
		}
		if out, err = parseDevices(m.Data, out); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

func (r *Router) onDevices(m *nats.Msg) {
	if len(m.Data) != 8 || m.Reply == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	devs, err := r.Devices(ctx, binary.BigEndian.Uint64(m.Data))
	if err != nil {
		_ = m.Respond([]byte("error: " + err.Error()))
		return
	}
	var out []byte
	for _, d := range devs {
		out = append(out, byte(len(d)))
		out = append(out, d...)
	}
	// An empty answer must still be distinguishable from an error: a
	// leading 0xff marks a list.
	_ = m.Respond(append([]byte{0xff}, out...))
}

// AskDevices asks the routers over NATS (the separate `longlink offline`
// process): the same answer as Router.Devices.
func AskDevices(ctx context.Context, nc *nats.Conn, uid uint64) ([]string, error) {
	var q [8]byte
	binary.BigEndian.PutUint64(q[:], uid)
	m, err := nc.RequestWithContext(ctx, SubjectDevices, q[:])
	if err != nil {
		return nil, fmt.Errorf("push: device query: %w", err)
	}
	if len(m.Data) == 0 || m.Data[0] != 0xff {
		return nil, fmt.Errorf("push: device query: %s", m.Data)
	}
	return parseDevices(m.Data[1:], nil)
}
