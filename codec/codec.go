// Package codec owns longlink's wire framing: the 8-byte frame header, the
// command and code tables, and a zero-copy splitter that finds whole frames
// in a byte stream. Bodies are protobuf messages (see proto/); this package
// treats them as opaque bytes.
//
// Frame layout (big-endian), documented for client authors in docs/protocol.md:
//
//	 0        1        2        3        4        5        6        7
//	+--------+--------+--------+--------+--------+--------+--------+--------+
//	| magic  |ver|flag|  cmd   |   seq (u16)     |    body length (u24)     |
//	+--------+--------+--------+--------+--------+--------+--------+--------+
//	| body (length bytes, protobuf) ...
//
// byte 1 holds the protocol version in its high nibble and flags in its low
// nibble. Header-only frames (HEARTBEAT, PONG) are exactly 8 bytes.
//
// Everything here is pure and goroutine-safe; nothing allocates except the
// Append helpers when dst must grow.
package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	// Magic is the first byte of every frame. Not ASCII, so a stray HTTP or
	// text client is told apart from the first byte.
	Magic = 0xD7
	// Version is the protocol version this package speaks. Version 1 is the
	// plaintext protocol; encryption is announced by FlagEncrypted on the
	// HELLO handshake (docs/protocol.md "Encryption"), not by a new version.
	Version = 1
	// HeaderSize is the fixed header length in bytes.
	HeaderSize = 8
	// MaxBodyLimit is the largest body length the header can express.
	MaxBodyLimit = 1<<24 - 1
	// DefaultMaxBody is the default body-size limit the gateway enforces.
	DefaultMaxBody = 64 << 10
)

// Flags, the low nibble of byte 1.
const (
	FlagEncrypted  uint8 = 0x1 // on HELLO/HELLO_OK only: the handshake; records after it carry no frame header
	FlagCompressed uint8 = 0x2 // body is compressed (reserved)
	flagsKnown           = FlagEncrypted | FlagCompressed
)

// Cmd is a frame's command.
type Cmd uint8

// Commands. Values are stable; gaps are reserved for the named later additions.
const (
	CmdAuth      Cmd = 0x01 // c→s: Auth
	CmdAuthOK    Cmd = 0x02 // s→c: AuthOK
	CmdHeartbeat Cmd = 0x03 // c→s: header only
	CmdPong      Cmd = 0x04 // s→c: header only, seq echoed
	CmdRequest   Cmd = 0x05 // c→s: Request
	CmdResponse  Cmd = 0x06 // s→c: Response, seq of the request
	CmdPush      Cmd = 0x07 // s→c: Push
	CmdError     Cmd = 0x08 // s→c: Error
	CmdGoAway    Cmd = 0x09 // s→c: GoAway
	CmdPolicy    Cmd = 0x0A // s→c: HeartbeatPolicy update
	CmdConfig    Cmd = 0x0B // s→c: ClientConfig (degrade mode)

	CmdSync     Cmd = 0x10 // reserved: sync by SyncKey
	CmdSyncResp Cmd = 0x11 // reserved
	CmdShake    Cmd = 0x12 // c→s: shake red packet (docs/shake.md)
	CmdShakeRsp Cmd = 0x13 // s→c: the shake's answer
	CmdOpen     Cmd = 0x14 // c→s: open red packet
	CmdOpenRsp  Cmd = 0x15 // s→c: the open's answer

	CmdHello   Cmd = 0x20 // c→s: encryption handshake (Noise NK message 1, AUTH inside)
	CmdHelloOK Cmd = 0x21 // s→c: message 2, AUTH_OK inside
)

var cmdNames = [256]string{
	CmdAuth: "AUTH", CmdAuthOK: "AUTH_OK", CmdHeartbeat: "HEARTBEAT", CmdPong: "PONG",
	CmdRequest: "REQUEST", CmdResponse: "RESPONSE", CmdPush: "PUSH", CmdError: "ERROR",
	CmdGoAway: "GOAWAY", CmdPolicy: "POLICY", CmdConfig: "CONFIG", CmdSync: "SYNC", CmdSyncResp: "SYNC_RESP",
	CmdShake: "SHAKE", CmdShakeRsp: "SHAKE_RESP", CmdOpen: "OPEN", CmdOpenRsp: "OPEN_RESP",
	CmdHello: "HELLO", CmdHelloOK: "HELLO_OK",
}

func (c Cmd) String() string {
	if n := cmdNames[c]; n != "" {
		return n
	}
	return fmt.Sprintf("CMD(0x%02x)", uint8(c))
}

// Errors returned by ParseHeader and Split. Each maps to a close code.
var (
	ErrBadMagic   = errors.New("codec: bad magic byte")
	ErrBadVersion = errors.New("codec: unsupported protocol version")
	ErrBadFlags   = errors.New("codec: unknown flags")
	ErrTooLarge   = errors.New("codec: body exceeds size limit")
)

// Header is a decoded frame header.
type Header struct {
	Version uint8
	Flags   uint8
	Cmd     Cmd
	Seq     uint16
	Len     uint32 // body length
}

// ParseHeader decodes and validates the header at the start of b, which must
// hold at least HeaderSize bytes. maxBody bounds Len (0 means DefaultMaxBody).
func ParseHeader(b []byte, maxBody int) (Header, error) {
	_ = b[HeaderSize-1]
	h := Header{
		Version: b[1] >> 4,
		Flags:   b[1] & 0x0f,
		Cmd:     Cmd(b[2]),
		Seq:     binary.BigEndian.Uint16(b[3:5]),
		Len:     uint32(b[5])<<16 | uint32(b[6])<<8 | uint32(b[7]),
	}
	if b[0] != Magic {
		return h, ErrBadMagic
	}
	if h.Version != Version {
		return h, ErrBadVersion
	}
	if h.Flags&^flagsKnown != 0 {
		return h, ErrBadFlags
	}
	if maxBody <= 0 {
		maxBody = DefaultMaxBody
	}
	if int(h.Len) > maxBody {
		return h, ErrTooLarge
	}
	return h, nil
}

// PutHeader writes an 8-byte header into b[:HeaderSize].
func PutHeader(b []byte, cmd Cmd, flags uint8, seq uint16, bodyLen int) {
	_ = b[HeaderSize-1]
	b[0] = Magic
	b[1] = Version<<4 | flags&0x0f
	b[2] = byte(cmd)
	binary.BigEndian.PutUint16(b[3:5], seq)
	b[5] = byte(bodyLen >> 16)
	b[6] = byte(bodyLen >> 8)
	b[7] = byte(bodyLen)
}

// AppendHeader appends a header announcing a body of bodyLen bytes.
func AppendHeader(dst []byte, cmd Cmd, flags uint8, seq uint16, bodyLen int) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	PutHeader(dst[n:], cmd, flags, seq, bodyLen)
	return dst
}

// AppendFrame appends a whole frame (header plus body) to dst.
func AppendFrame(dst []byte, cmd Cmd, flags uint8, seq uint16, body []byte) []byte {
	dst = AppendHeader(dst, cmd, flags, seq, len(body))
	return append(dst, body...)
}

// Frame is one frame found by Split. Body aliases the input buffer.
type Frame struct {
	Header
	Body []byte
}

// Split decodes the first frame in buf. It returns the frame and the number
// of bytes it occupies; n == 0 with a nil error means buf holds only part of
// a frame (wait for more bytes). Body aliases buf: no copy is made.
func Split(buf []byte, maxBody int) (f Frame, n int, err error) {
	if len(buf) < HeaderSize {
		if len(buf) > 0 && buf[0] != Magic {
			return f, 0, ErrBadMagic // fail fast on garbage, don't wait for 8 bytes
		}
		return f, 0, nil
	}
	f.Header, err = ParseHeader(buf, maxBody)
	if err != nil {
		return f, 0, err
	}
	end := HeaderSize + int(f.Len)
	if len(buf) < end {
		return f, 0, nil
	}
	f.Body = buf[HeaderSize:end:end]
	return f, end, nil
}

// HeaderOnly returns the 8-byte frame for a header-only command; used to
// pre-encode PONG and HEARTBEAT.
func HeaderOnly(cmd Cmd, seq uint16) [HeaderSize]byte {
	var b [HeaderSize]byte
	PutHeader(b[:], cmd, 0, seq, 0)
	return b
}
