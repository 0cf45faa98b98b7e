package gateway

// Transport encryption on the loop (package secure; docs/protocol.md
// "Encryption"). A client sends HELLO (Noise NK message 1 carrying its AUTH
// frame); the server verifies the token, answers HELLO_OK (message 2
// carrying AUTH_OK or the ERROR) and from then on every byte both ways is a
// sealed record. The connection joins the session table only when the
// client's first record proves it holds the keys: a replayed first flight
// gets a HELLO_OK it cannot read, replaces no session, counts no flap, and
// dies at the AUTH deadline.

import (
	"errors"
	"fmt"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/bytebufferpool"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/secure"
)

// Encryption policies (Config.Encryption).
const (
	EncryptionOff      = "off"      // HELLO refused (3000), as by servers before encryption
	EncryptionOptional = "optional" // HELLO or plaintext AUTH
	EncryptionRequired = "required" // plaintext AUTH refused with 4010
)

// secureState is the server's encryption side: the key ring (swapped whole
// on reload) and the handshake metrics.
type secureState struct {
	required   bool
	handshakes *prometheus.CounterVec // result
	records    prometheus.Counter     // records refused (bad_record)
	hsTime     prometheus.Histogram
}

func (c *Config) fillEncryption() error {
	switch c.Encryption {
	case "":
		c.Encryption = EncryptionOff
		if c.ServerKeys != nil {
			c.Encryption = EncryptionOptional
		}
	case EncryptionOff:
	case EncryptionOptional, EncryptionRequired:
		if c.ServerKeys == nil {
			return fmt.Errorf("gateway: --encryption %s needs server keys (longlink keys)", c.Encryption)
		}
	default:
		return fmt.Errorf("gateway: --encryption %q: want required, optional or off", c.Encryption)
	}
	return nil
}

func (s *Server) initSecure() {
	s.sec.required = s.cfg.Encryption == EncryptionRequired
	if s.cfg.Encryption != EncryptionOff {
		s.secKeys.Store(s.cfg.ServerKeys)
	}
	s.sec.handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "longlink_handshakes_total", Help: "Encrypted handshakes (HELLO) by result.",
	}, []string{"result"})
	s.sec.records = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "longlink_bad_records_total", Help: "Sealed records that failed authentication (connection closed with 3010).",
	})
	s.sec.hsTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "longlink_handshake_seconds", Help: "Time the loop spent in one server handshake (3 X25519 operations).",
		Buckets: []float64{25e-6, 50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3},
	})
	s.metrics.reg.MustRegister(s.sec.handshakes, s.sec.records, s.sec.hsTime)
	s.metrics.all = append(s.metrics.all, s.sec.handshakes, s.sec.records, s.sec.hsTime)
}

// ReloadServerKeys swaps in a new key ring; connections already encrypted
// keep their session keys, new HELLOs use the new ring.
func (s *Server) ReloadServerKeys(r *secure.KeyRing) error {
	if r == nil {
		return errors.New("gateway: nil key ring")
	}
	if s.cfg.Encryption == EncryptionOff {
		return errors.New("gateway: encryption is off")
	}
	s.secKeys.Store(r)
	s.log.Info("server keys reloaded", "active", r.Active().ID, "ids", r.IDs())
	return nil
}

// beforeAuth handles HELLO and applies the policy to plaintext AUTH, for a
// connection not yet authenticated; done reports that f was dealt with.
func (s *Server) beforeAuth(c *conn, f codec.Frame) (code codec.Code, done bool) {
	if c.state.Load() != stateNew {
		return codec.OK, false
	}
	switch f.Cmd {
	case codec.CmdHello:
		return s.onHello(c, f), true
	case codec.CmdAuth:
		if s.sec.required {
			s.sec.handshakes.WithLabelValues("plaintext_refused").Inc()
			return codec.CodeEncRequired, true
		}
	}
	return codec.OK, false
}

// onHello runs the whole server handshake in one go, on the loop: it is
// ~3 X25519 operations (see BenchmarkServerHandshake and the
// longlink_handshake_seconds histogram).
func (s *Server) onHello(c *conn, f codec.Frame) codec.Code {
	ring := s.secKeys.Load()
	if ring == nil || f.Flags != codec.FlagEncrypted || c.sec.Load() != nil {
		s.sec.handshakes.WithLabelValues("refused").Inc()
		return codec.CodeProtocol
	}
	t0 := time.Now()
	defer func() { s.sec.hsTime.Observe(time.Since(t0).Seconds()) }()
	sh, payload, err := ring.Accept(f.Body, nil)
	if err != nil {
		if errors.Is(err, secure.ErrUnknownKey) {
			s.sec.handshakes.WithLabelValues("unknown_key").Inc()
			return codec.CodeUnknownKey
		}
		s.sec.handshakes.WithLabelValues("bad_handshake").Inc()
		s.connLog.Warn("bad handshake", "conn", c.id, "remote", c.gc.RemoteAddr().String(), "err", err)
		return codec.CodeBadHandshake
	}
	// The first flight carries exactly one AUTH frame.
	var code codec.Code
	af, n, err := codec.Split(payload, s.cfg.MaxBody)
	switch {
	case err != nil:
		code = codec.ErrCode(err)
	case n == 0 || n != len(payload) || af.Flags != 0:
		code = codec.CodeProtocol
	case af.Cmd != codec.CmdAuth:
		code = codec.CodeNotAuthed
	default:
		code = s.checkAuth(c, af.Body)
	}
	bb := respPool.Get()
	defer respPool.Put(bb)
	var answer []byte
	if code == codec.OK {
		bb.B = s.appendAuthOK(bb.B[:0], c)
		answer = bb.B
	} else {
		answer = errorFrame(code)
	}
	out := make([]byte, 0, 10+codec.HeaderSize+secure.DHLen+len(answer)+secure.TagSize)
	if c.ws {
		out = wsHeader(out, 0x2, codec.HeaderSize+secure.DHLen+len(answer)+secure.TagSize)
	}
	out = codec.AppendHeader(out, codec.CmdHelloOK, codec.FlagEncrypted, 0, secure.DHLen+len(answer)+secure.TagSize)
	out, st, err := sh.Finish(out, answer)
	if err != nil {
		s.sec.handshakes.WithLabelValues("bad_handshake").Inc()
		return codec.CodeBadHandshake
	}
	_, _ = c.gc.Write(out)
	c.sec.Store(st)
	if code != codec.OK {
		s.sec.handshakes.WithLabelValues("auth_refused").Inc()
		c.closeCode.Store(uint32(code))
		return codeSent // the ERROR went in HELLO_OK
	}
	s.sec.handshakes.WithLabelValues("ok").Inc()
	return codec.OK
}

// records opens the sealed records at the start of buf in place and handles
// the frames inside (one or more whole frames per record); it returns the
// bytes consumed like frames.
func (s *Server) records(c *conn, st *secure.State, buf []byte) (int, codec.Code) {
	off := 0
	for off < len(buf) {
		plain, n, err := st.Open(buf[off:], codec.HeaderSize+s.cfg.MaxBody)
		if err != nil {
			if errors.Is(err, secure.ErrTooLarge) {
				return off, codec.CodeFrameTooBig
			}
			s.sec.records.Inc()
			s.connLog.Warn("bad record", "conn", c.id, "remote", c.gc.RemoteAddr().String(), "err", err)
			return off, codec.CodeBadRecord
		}
		if n == 0 {
			break
		}
		off += n
		if c.state.Load() == stateNew { // the first record: the client holds the keys
			if code := s.admit(c, false); code != codec.OK {
				return off, code
			}
		}
		for p := 0; p < len(plain); {
			f, m, err := codec.Split(plain[p:], s.cfg.MaxBody)
			if err != nil {
				return off, codec.ErrCode(err)
			}
			if m == 0 {
				return off, codec.CodeProtocol // a frame cut across records
			}
			p += m
			if code := s.handle(c, f); code != codec.OK {
				return off, code
			}
		}
		if st.Exhausted() {
			return off, codec.CodeRekey
		}
	}
	return off, codec.OK
}

var sealPool bytebufferpool.Pool

// writeSealed writes frames (one or more whole frames) to c as one record,
// in one binary message on WebSocket. Must run on c's loop: the send
// counter orders records.
func writeSealed(c *conn, st *secure.State, frames []byte) {
	bb := sealPool.Get()
	b := bb.B[:0]
	if c.ws {
		b = wsHeader(b, 0x2, len(frames)+secure.Overhead)
	}
	b = st.Seal(b, frames)
	_, _ = c.gc.Write(b)
	bb.B = b
	if cap(b) > 64<<10 {
		bb.B = nil // don't pin big buffers in the pool
	}
	sealPool.Put(bb)
}

// sendSealedAsync queues frame for c from any goroutine: it is sealed on the
// loop when its turn comes (AsyncWritev with no bytes runs the callback on
// the loop without a syscall), so records keep the counter order.
func sendSealedAsync(c *conn, frame []byte, cb gnet.AsyncCallback) error {
	return c.gc.AsyncWritev(nil, func(gc gnet.Conn, err error) error {
		if err == nil {
			if st := c.sec.Load(); st != nil {
				writeSealed(c, st, frame)
			}
		}
		if cb != nil {
			return cb(gc, err)
		}
		return nil
	})
}

// Close codes of encryption: client text and reconnect hint.
func init() {
	for code, ci := range map[codec.Code]closeInfo{
		codec.CodeBadRecord:    {"record failed authentication", 1000},
		codec.CodeBadHandshake: {"handshake failed: check the pinned server key", 5000},
		codec.CodeRekey:        {"record limit reached: reconnect", 0},
		codec.CodeEncRequired:  {"encryption required: reconnect with HELLO, never in plaintext", 0},
		codec.CodeUnknownKey:   {"unknown server key id: update the pinned keys", 0},
	} {
		closeInfos[code] = ci
		errorFrames[code] = encodeError(code, ci.msg, ci.retryAfter)
	}
}
