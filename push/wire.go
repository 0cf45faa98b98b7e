package push

import (
	"encoding/binary"
	"errors"
	"strings"
)

// Subjects. Node subjects carry router→node deliveries; everything else is
// fleet-wide.
const (
	SubjectNotify    = "longlink.push.notify"    // ingress: NotifyRequest (protobuf), queue group
	SubjectMulticast = "longlink.push.multicast" // ingress: MulticastRequest (protobuf), queue group
	SubjectBroadcast = "longlink.push.broadcast" // ingress: BroadcastRequest (protobuf), queue group
	SubjectAll       = "longlink.push.all"       // router → every node: rate-limited broadcasts
	SubjectPresence  = "longlink.push.presence"  // node → every router: deltas, snapshots, beacons
	SubjectResync    = "longlink.push.resync"    // router → nodes: send a snapshot (body: node id, or empty for all)
	nodeSubjectBase  = "longlink.push.node."
	routerQueue      = "longlink.router"
)

// MaxPayload is the largest inline payload of a notify.
const MaxPayload = 1024

// maxDevice bounds a device id on the wire (auth.MaxDevice is 64).
const maxDevice = 255

// NodeSubject is the subject a node subscribes to for its deliveries. Node
// ids may contain anything; the characters NATS gives meaning to are replaced.
func NodeSubject(node string) string {
	return nodeSubjectBase + strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, node)
}

// Delivery kinds.
const (
	KindNotify    byte = 1 // to the listed users on one node
	KindBroadcast byte = 2 // to everyone connected to the node
)

// Deliver is one router→node message, parsed in place: Device, Payload and
// the uid list alias the message bytes.
//
// Layout (big-endian): kind u8 | type u32 | version u64 | sent_unix_ns i64 |
// device_len u8 | device | payload_len u16 | payload | count u32 | count × uid u64.
type Deliver struct {
	Kind    byte
	Type    uint32
	Version uint64
	SentNs  int64 // when the API call arrived at the router (latency metrics)
	Device  []byte
	Payload []byte
	uids    []byte
}

var errShort = errors.New("push: truncated message")

// AppendDeliver encodes a Deliver message.
func AppendDeliver(dst []byte, kind byte, typ uint32, version uint64, sentNs int64, device string, payload []byte, uids []uint64) []byte {
	dst = append(dst, kind)
	dst = binary.BigEndian.AppendUint32(dst, typ)
	dst = binary.BigEndian.AppendUint64(dst, version)
	dst = binary.BigEndian.AppendUint64(dst, uint64(sentNs))
	dst = append(dst, byte(len(device)))
	dst = append(dst, device...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(payload)))
	dst = append(dst, payload...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(uids)))
	for _, u := range uids {
		dst = binary.BigEndian.AppendUint64(dst, u)
	}
	return dst
}

// ParseDeliver decodes b without allocating. It rejects anything malformed,
// oversized or with trailing bytes.
func ParseDeliver(b []byte) (d Deliver, err error) {
	if len(b) < 22 {
		return d, errShort
	}
	d.Kind = b[0]
	if d.Kind != KindNotify && d.Kind != KindBroadcast {
		return d, errors.New("push: unknown delivery kind")
	}
	d.Type = binary.BigEndian.Uint32(b[1:])
	d.Version = binary.BigEndian.Uint64(b[5:])
	d.SentNs = int64(binary.BigEndian.Uint64(b[13:]))
	dl := int(b[21])
	b = b[22:]
	if len(b) < dl+2 {
		return d, errShort
	}
	d.Device, b = b[:dl:dl], b[dl:]
	pl := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if pl > MaxPayload {
		return d, errors.New("push: payload over 1 KiB")
	}
	if len(b) < pl+4 {
		return d, errShort
	}
	d.Payload, b = b[:pl:pl], b[pl:]
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(len(b)) != uint64(n)*8 {
		return d, errors.New("push: uid list length mismatch")
	}
	if d.Kind == KindBroadcast && n != 0 {
		return d, errors.New("push: broadcast with uids")
	}
	d.uids = b
	return d, nil
}

// N is the number of users in d.
func (d *Deliver) N() int { return len(d.uids) / 8 }

// UID returns the i'th user.
func (d *Deliver) UID(i int) uint64 { return binary.BigEndian.Uint64(d.uids[i*8:]) }

// Presence kinds (node → routers).
const (
	PresDelta    byte = 10 // records are (uid, +1 or -1)
	PresSnapshot byte = 11 // records are (uid, connection count); flags say first/last chunk
	PresBeacon   byte = 12 // no records: "I am alive"
	PresGoodbye  byte = 13 // no records: the node is leaving; drop its users
)

// Snapshot chunk flags.
const (
	SnapFirst byte = 1
	SnapLast  byte = 2
)

// Presence is one node→router message, parsed in place.
//
// Layout (big-endian): kind u8 | node_len u8 | node | incarnation u64 |
// flags u8 | count u32 | count × (uid u64, n i16).
type Presence struct {
	Kind        byte
	Node        []byte
	Incarnation uint64 // random per node process start: a restart invalidates what routers know
	Flags       byte
	recs        []byte
}

const presRec = 10

// AppendPresenceHeader starts a presence message with count records to follow
// (append them with AppendPresenceRec).
func AppendPresenceHeader(dst []byte, kind byte, node string, inc uint64, flags byte, count int) []byte {
	dst = append(dst, kind, byte(len(node)))
	dst = append(dst, node...)
	dst = binary.BigEndian.AppendUint64(dst, inc)
	dst = append(dst, flags)
	return binary.BigEndian.AppendUint32(dst, uint32(count))
}

// AppendPresenceRec appends one record.
func AppendPresenceRec(dst []byte, uid uint64, n int16) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uid)
	return binary.BigEndian.AppendUint16(dst, uint16(n))
}

// ParsePresence decodes b without allocating.
func ParsePresence(b []byte) (p Presence, err error) {
	if len(b) < 2 {
		return p, errShort
	}
	p.Kind = b[0]
	if p.Kind < PresDelta || p.Kind > PresGoodbye {
		return p, errors.New("push: unknown presence kind")
	}
	nl := int(b[1])
	b = b[2:]
	if nl == 0 || len(b) < nl+13 {
		return p, errShort
	}
	p.Node, b = b[:nl:nl], b[nl:]
	p.Incarnation = binary.BigEndian.Uint64(b)
	p.Flags = b[8]
	n := binary.BigEndian.Uint32(b[9:])
	b = b[13:]
	if uint64(len(b)) != uint64(n)*presRec {
		return p, errors.New("push: record list length mismatch")
	}
	p.recs = b
	return p, nil
}

// N is the number of records.
func (p *Presence) N() int { return len(p.recs) / presRec }

// Rec returns record i.
func (p *Presence) Rec(i int) (uid uint64, n int16) {
	r := p.recs[i*presRec:]
	return binary.BigEndian.Uint64(r), int16(binary.BigEndian.Uint16(r[8:]))
}
