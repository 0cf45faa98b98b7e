package gateway

import (
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// pongs holds a pre-encoded PONG for every sequence number, so a heartbeat
// is answered with one Write of static bytes: no encoding, no allocation.
var pongs = func() []byte {
	b := make([]byte, 0, 65536*codec.HeaderSize)
	for seq := 0; seq < 65536; seq++ {
		b = codec.AppendHeader(b, codec.CmdPong, 0, uint16(seq), 0)
	}
	return b
}()

func pongFrame(seq uint16) []byte {
	o := int(seq) * codec.HeaderSize
	return pongs[o : o+codec.HeaderSize : o+codec.HeaderSize]
}

// closeInfo is the client-facing text and reconnect hint for a close code.
type closeInfo struct {
	msg        string
	retryAfter uint32 // ms
}

var closeInfos = map[codec.Code]closeInfo{
	codec.CodeProtocol:     {"malformed frame", 5000},
	codec.CodeAuthTimeout:  {"no AUTH within the deadline", 1000},
	codec.CodeStale:        {"idle timeout: no frame received in time", 0},
	codec.CodeSlowConsumer: {"outbound queue full: reconnect and sync", 0},
	codec.CodeShutdown:     {"server shutting down", 1000},
	codec.CodeFrameTooBig:  {"frame body over the size limit", 5000},
	codec.CodeFlood:        {"too many frames per second", 10000},
	codec.CodeServerBusy:   {"server busy", 5000},
	codec.CodeNotAuthed:    {"first frame must be AUTH", 1000},
	codec.CodeAuthTwice:    {"already authenticated", 1000},
	codec.CodeBadToken:     {"invalid token: do not reconnect with it", 0},
	codec.CodeTokenExpired: {"token expired: get a new one", 0},
	codec.CodeBadVersion:   {"unsupported protocol version: upgrade the client", 0},
	codec.CodeReplaced:     {"the same device connected again elsewhere", 0},
	codec.CodeFrameTooSlow: {"frame arriving slower than the minimum rate", 5000},
	codec.CodeBadAuth:      {"malformed AUTH (device id over 64 bytes?): fix the request; the token may be fine", 0},
}

// errorFrames are pre-encoded ERROR frames for each close code.
var errorFrames = func() map[codec.Code][]byte {
	m := make(map[codec.Code][]byte, len(closeInfos))
	for code, ci := range closeInfos {
		m[code] = encodeError(code, ci.msg, ci.retryAfter)
	}
	return m
}()

func encodeError(code codec.Code, msg string, retryAfter uint32) []byte {
	body, _ := proto.Marshal(&pb.Error{Code: uint32(code), Message: msg, RetryAfterMs: retryAfter})
	return codec.AppendFrame(nil, codec.CmdError, 0, 0, body)
}

func errorFrame(code codec.Code) []byte {
	if f, ok := errorFrames[code]; ok {
		return f
	}
	return encodeError(code, code.String(), 0)
}

// parseRequest decodes a Request body without allocating: method and body
// alias b.
func parseRequest(b []byte) (method, body []byte, timeoutMS uint64, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, nil, 0, false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			method, n = protowire.ConsumeBytes(b)
		case num == 2 && typ == protowire.BytesType:
			body, n = protowire.ConsumeBytes(b)
		case num == 3 && typ == protowire.VarintType:
			timeoutMS, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, nil, 0, false
		}
		b = b[n:]
	}
	return method, body, timeoutMS, len(method) > 0
}

// appendResponse appends a RESPONSE frame for seq.
func appendResponse(dst []byte, seq uint16, code codec.Code, msg string, body []byte, retryAfter uint32) []byte {
	size := 0
	if code != 0 {
		size += protowire.SizeTag(1) + protowire.SizeVarint(uint64(code))
	}
	if msg != "" {
		size += protowire.SizeTag(2) + protowire.SizeBytes(len(msg))
	}
	if len(body) > 0 {
		size += protowire.SizeTag(3) + protowire.SizeBytes(len(body))
	}
	if retryAfter != 0 {
		size += protowire.SizeTag(4) + protowire.SizeVarint(uint64(retryAfter))
	}
	dst = codec.AppendHeader(dst, codec.CmdResponse, 0, seq, size)
	if code != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(code))
	}
	if msg != "" {
		dst = protowire.AppendTag(dst, 2, protowire.BytesType)
		dst = protowire.AppendString(dst, msg)
	}
	if len(body) > 0 {
		dst = protowire.AppendTag(dst, 3, protowire.BytesType)
		dst = protowire.AppendBytes(dst, body)
	}
	if retryAfter != 0 {
		dst = protowire.AppendTag(dst, 4, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(retryAfter))
	}
	return dst
}

// authBody is a parsed Auth: token and device alias the frame body.
type authBody struct {
	token, device []byte
	network       pb.Network
}

// parseAuth decodes an Auth body without allocating (the connection's
// state keeps only what it needs: a copy of the device id).
func parseAuth(b []byte) (a authBody, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return a, false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			a.token, n = protowire.ConsumeBytes(b)
		case num == 2 && typ == protowire.BytesType:
			a.device, n = protowire.ConsumeBytes(b)
		case num == 3 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(b)
			// Unknown networks (a newer client's, or junk) count as
			// NETWORK_UNKNOWN: the policy and the echo in AUTH_OK use that.
			if v <= uint64(pb.Network_NETWORK_CELLULAR) {
				a.network = pb.Network(v)
			} else {
				a.network = pb.Network_NETWORK_UNKNOWN
			}
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return a, false
		}
		b = b[n:]
	}
	return a, true
}

// appendAuthOK appends the AUTH_OK frame for c, encoded by hand so the
// handshake leaves little garbage behind (its garbage would otherwise sit
// between the long-lived connection objects allocated at the same time).
func (s *Server) appendAuthOK(dst []byte, c *conn) []byte {
	return s.appendAuthOKWith(dst, c, s.nodesFor(c, false))
}

// appendAuthOKWith is appendAuthOK with the node list given (nodes: a
// serialized SignedNodeList, or nil; fleet.go).
func (s *Server) appendAuthOKWith(dst []byte, c *conn, nodes []byte) []byte {
	p := s.pol.Load().ps.For(c.network)
	minS := secs(p.Min)
	half := max(minS/2, 1)
	first := half + uint32(rand.IntN(int(max(minS, half)-half)+1))
	var hb [48]byte
	h := hb[:0]
	for _, f := range [...]struct {
		num protowire.Number
		v   uint64
	}{{1, uint64(minS)}, {2, uint64(secs(p.Max))}, {3, uint64(secs(p.Step))}, {4, uint64(secs(p.Idle))}, {5, uint64(first)}, {6, uint64(c.network)}} {
		if f.v != 0 {
			h = protowire.AppendTag(h, f.num, protowire.VarintType)
			h = protowire.AppendVarint(h, f.v)
		}
	}
	off := len(dst)
	dst = codec.AppendHeader(dst, codec.CmdAuthOK, 0, 0, 0)
	dst = protowire.AppendTag(dst, 1, protowire.VarintType)
	dst = protowire.AppendVarint(dst, c.uid)
	if c.device != "" {
		dst = protowire.AppendTag(dst, 2, protowire.BytesType)
		dst = protowire.AppendString(dst, c.device)
	}
	dst = protowire.AppendTag(dst, 3, protowire.VarintType)
	dst = protowire.AppendVarint(dst, uint64(time.Now().UnixMilli()))
	dst = protowire.AppendTag(dst, 4, protowire.BytesType)
	dst = protowire.AppendBytes(dst, h)
	dst = protowire.AppendTag(dst, 5, protowire.BytesType)
	dst = protowire.AppendString(dst, s.cfg.Node)
	dst = protowire.AppendTag(dst, 6, protowire.VarintType)
	dst = protowire.AppendVarint(dst, uint64(s.cfg.MaxBody))
	if nodes != nil { // the fleet's node list (fleet.go)
		dst = protowire.AppendTag(dst, 7, protowire.BytesType)
		dst = protowire.AppendBytes(dst, nodes)
	}
	codec.PutHeader(dst[off:], codec.CmdAuthOK, 0, 0, len(dst)-off-codec.HeaderSize)
	return dst
}

// secs rounds a duration up to whole seconds, as the wire carries them.
func secs(d time.Duration) uint32 { return uint32((d + time.Second - 1) / time.Second) }
