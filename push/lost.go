package push

import (
	"encoding/binary"

	"github.com/nats-io/nats.go"
)

// Lost pushes: a gateway worker whose connection closed with PUSH frames
// the client may never have received (still queued in the worker or in the
// kernel, unacknowledged; gateway/push_lost.go says how it decides) reports
// the newest version per type of that connection to the routers, which
// hand them to the offline hook for that one device. The device query at
// send time still cancels them if the device came back within the delay.
//
// Wire (big-endian), one message per batch of connections: repeated
// uid u64 | device_len u8 | device | n u8 | n × (type u32 | version u64).
const SubjectLost = "longlink.push.lost" // node → router (queue group)

// MaxLostTypes bounds the types reported per connection.
const MaxLostTypes = 32

// LostPush is one type's newest version on a closed connection.
type LostPush struct {
	Type    uint32
	Version uint64
}

type lostRec struct {
	uid    uint64
	device string
	n      uint8
	p      [8]LostPush // the common case inline
	more   []LostPush
}

// Lost reports pushes a closed connection of (uid, device) may not have
// received. Never blocks (a full queue drops, counted in LostDropped); pushes
// is only read during the call.
func (n *Node) Lost(uid uint64, device string, pushes []LostPush) {
	if len(pushes) == 0 || n.closing.Load() {
		return
	}
	pushes = pushes[:min(len(pushes), MaxLostTypes)]
	r := lostRec{uid: uid, device: device, n: uint8(len(pushes))}
	if len(pushes) <= len(r.p) {
		copy(r.p[:], pushes)
	} else {
		r.more = append([]LostPush(nil), pushes...)
	}
	n.lostOnce.Do(func() {
		n.lost = make(chan lostRec, 4096)
		go n.lostPublisher()
	})
	select {
	case n.lost <- r:
	default:
		n.LostDropped.Add(1)
	}
}

// lostPublisher batches queued reports into messages of at most ~60 KiB.
func (n *Node) lostPublisher() {
	buf := make([]byte, 0, 64<<10)
	for {
		var r lostRec
		select {
		case <-n.stop:
			return
		case r = <-n.lost:
		}
		buf = appendLost(buf[:0], &r)
	more:
		for len(buf) < 60<<10 {
			select {
			case r = <-n.lost:
				buf = appendLost(buf, &r)
			default:
				break more
			}
		}
		_ = n.nc.Publish(SubjectLost, buf)
	}
}

func appendLost(b []byte, r *lostRec) []byte {
	ps := r.more
	if ps == nil {
		ps = r.p[:r.n]
	}
	d := r.device[:min(len(r.device), maxDevice)]
	b = binary.BigEndian.AppendUint64(b, r.uid)
	b = append(b, byte(len(d)))
	b = append(b, d...)
	b = append(b, byte(len(ps)))
	for _, p := range ps {
		b = binary.BigEndian.AppendUint32(b, p.Type)
		b = binary.BigEndian.AppendUint64(b, p.Version)
	}
	return b
}

// parseLost calls fn for each reported (uid, device, type, version); it
// stops at the first malformed record and reports whether all parsed.
func parseLost(b []byte, fn func(uid uint64, device string, p LostPush)) bool {
	for len(b) > 0 {
		if len(b) < 9 {
			return false
		}
		uid, dl := binary.BigEndian.Uint64(b), int(b[8])
		b = b[9:]
		if len(b) < dl+1 {
			return false
		}
		dev := string(b[:dl])
		k := int(b[dl])
		b = b[dl+1:]
		if len(b) < 12*k || k > MaxLostTypes {
			return false
		}
		for i := range k {
			fn(uid, dev, LostPush{Type: binary.BigEndian.Uint32(b[12*i:]), Version: binary.BigEndian.Uint64(b[12*i+4:])})
		}
		b = b[12*k:]
	}
	return true
}

// onLost hands reported pushes to the offline hook, one device each (no
// payload: the worker keeps none per connection; the notification says
// "sync type T"). Without a hook they are dropped: the client syncs on its
// next connect, as before.
func (r *Router) onLost(m *nats.Msg) {
	h := r.offline.Load()
	ok := parseLost(m.Data, func(uid uint64, device string, p LostPush) {
		r.m.lost.Inc()
		if h != nil && uid != 0 && p.Type != 0 {
			h.Notified(uid, device, p.Type, p.Version, nil, false)
		}
	})
	if !ok {
		r.m.presence.WithLabelValues("malformed").Inc()
	}
}
