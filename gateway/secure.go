package gateway

// Transport encryption (package secure; docs/protocol.md "Encryption"). A
// client sends HELLO (Noise NK message 1 carrying its AUTH frame); the
// server verifies the token, answers HELLO_OK (message 2 carrying AUTH_OK or
// the ERROR) and from then on every byte both ways is a sealed record,
// opened in place and sealed on the connection's loop. The handshake's
// X25519 work runs on a bounded pool (onHello). The connection joins the session table only when the
// client's first record proves it holds the keys: a replayed first flight
// gets a HELLO_OK it cannot read, replaces no session, counts no flap, and
// dies at the AUTH deadline.

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/bytebufferpool"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/secure"
)

// Encryption policies (Config.Encryption).
const (
	EncryptionOff      = "off"      // HELLO refused (3000), as by servers before encryption
	EncryptionOptional = "optional" // HELLO or plaintext AUTH
	EncryptionRequired = "required" // plaintext AUTH refused with 4010
)

// secureState is the server's encryption side (the server key ring is
// Server.secKeys, swapped whole on reload): reloaded token keys, the
// handshake pool and the metrics.
type secureState struct {
	tokKeys    atomic.Pointer[auth.KeySet] // token keys after a reload (nil: Config.Keys)
	required   bool
	jobs       chan hsJob // the handshake pool's queue
	poolOnce   sync.Once
	handshakes *prometheus.CounterVec // result
	records    prometheus.Counter     // records refused (bad_record)
	hsTime     prometheus.Histogram
}

func (c *Config) fillEncryption() error {
	if c.HandshakeWorkers == 0 {
		c.HandshakeWorkers = max(1, runtime.GOMAXPROCS(0)-c.Loops)
	}
	if c.HandshakeQueue <= 0 {
		c.HandshakeQueue = 1024
	}
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
	s.sec.jobs = make(chan hsJob, s.cfg.HandshakeQueue)
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
		Name: "longlink_handshake_seconds", Help: "Time spent in one server handshake (2 X25519 operations and an ephemeral key).",
		Buckets: []float64{25e-6, 50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3},
	})
	s.metrics.reg.MustRegister(s.sec.handshakes, s.sec.records, s.sec.hsTime)
	s.metrics.all = append(s.metrics.all, s.sec.handshakes, s.sec.records, s.sec.hsTime)
}

// tokenKeys returns the token keys in force.
func (s *Server) tokenKeys() *auth.KeySet {
	if k := s.sec.tokKeys.Load(); k != nil {
		return k
	}
	return s.cfg.Keys
}

// ReloadTokenKeys swaps in new token keys (SIGHUP in longlink gateway):
// tokens signed by a key no longer loaded are refused from then on.
func (s *Server) ReloadTokenKeys(ks *auth.KeySet) error {
	if ks == nil {
		return errors.New("gateway: nil token keys")
	}
	s.sec.tokKeys.Store(ks)
	s.log.Info("audit: token keys reloaded", "active", ks.Active())
	return nil
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

// handleKeysReload serves POST /keys/reload: reload Config.ServerKeysFile
// (admin token required; audited in the log).
func (s *Server) handleKeysReload(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		s.connLog.Warn("audit: unauthenticated admin request refused", "path", r.URL.Path, "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="longlink admin"`)
		http.Error(w, "admin token required", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if s.cfg.ServerKeysFile == "" {
		http.Error(w, "no server key file configured", http.StatusConflict)
		return
	}
	ring, err := secure.LoadKeyRing(s.cfg.ServerKeysFile)
	if err == nil {
		err = s.ReloadServerKeys(ring)
	}
	if err != nil {
		s.log.Warn("audit: server keys reload failed", "remote", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.log.Info("audit: server keys reloaded by admin call", "remote", r.RemoteAddr, "active", ring.Active().ID)
	fmt.Fprintf(w, "active %d, loaded %v\n", ring.Active().ID, ring.IDs())
}

// SetReloader sets what POST /reload (admin token) does: the same as
// SIGHUP in longlink gateway (keys and the configuration file's runtime
// settings). Set it before serving the admin port.
func (s *Server) SetReloader(fn func()) { s.reloader.Store(&fn) }

// handleReload serves POST /reload, audited.
func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		s.connLog.Warn("audit: unauthenticated admin request refused", "path", r.URL.Path, "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="longlink admin"`)
		http.Error(w, "admin token required", http.StatusUnauthorized)
		return
	}
	fn := s.reloader.Load()
	if fn == nil {
		http.Error(w, "nothing to reload in this process", http.StatusConflict)
		return
	}
	s.log.Info("audit: reload requested by admin call", "remote", r.RemoteAddr)
	(*fn)()
	fmt.Fprintln(w, "reloaded (see the audit lines for what changed)")
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

// onHello starts the server handshake. Its two X25519 ladders and ephemeral
// key (~0.12 ms on the reference host: BenchmarkServerHandshake) would hold the loop
// for every other connection's heartbeat, so by default they run on a
// bounded pool (HandshakeWorkers, fewer than the cores the loops need) and
// the result comes back to the loop through AsyncWritev; bytes the client
// sends meanwhile wait in gnet's buffer. A full queue sheds the handshake
// with 3007 server_busy, like connection admission.
func (s *Server) onHello(c *conn, f codec.Frame) codec.Code {
	ring := s.secKeys.Load()
	if ring == nil || f.Flags != codec.FlagEncrypted || c.sec.Load() != nil || c.inHello {
		s.sec.handshakes.WithLabelValues("refused").Inc()
		return codec.CodeProtocol
	}
	if s.cfg.HandshakeWorkers < 0 { // on the loop
		return s.applyHello(c, s.serverHandshake(ring, c, f.Body, s.peerForNodes(c)))
	}
	s.sec.poolOnce.Do(s.startHandshakePool)
	select {
	case s.sec.jobs <- hsJob{c: c, ring: ring, hello: bytes.Clone(f.Body), queued: time.Now(), peer: s.peerForNodes(c)}:
		c.inHello = true
		return codec.OK
	default:
		return s.shedHello(c)
	}
}

func (s *Server) shedHello(c *conn) codec.Code {
	s.sec.handshakes.WithLabelValues("shed").Inc()
	s.metrics.connRefused.WithLabelValues("handshake_queue").Inc()
	c.closeCode.Store(uint32(codec.CodeServerBusy))
	s.send(c, s.connAdm.busyFrame(0))
	return codeSent
}

type hsJob struct {
	c      *conn
	ring   *secure.KeyRing
	hello  []byte
	queued time.Time
	peer   netip.AddrPort // read on the loop: the fleet's node list in AUTH_OK (fleet.go)
}

// hsResult is a finished server handshake, to apply on the loop.
type hsResult struct {
	out     []byte        // HELLO_OK, or a plaintext ERROR when st is nil (WebSocket-framed if needed)
	st      *secure.State // nil: the handshake failed
	code    codec.Code    // OK: admitted on the first record; else closed after out
	uid     uint64
	device  string
	network pb.Network
}

// startHandshakePool starts the workers (at Start, so the ephemeral store
// fills before the first burst). A worker with no job pre-generates
// ephemeral keys (secure.Pregenerate) until the store is full, then blocks
// for work: the store is filled only from idle time. When workers and loops
// do not fit in the Ps (HandshakeWorkers+Loops > GOMAXPROCS), a worker
// yields after each job (runtime.Gosched): with a full queue it would
// otherwise hold its P until the scheduler preempts it (up to 10 ms) while
// a loop back from epoll_wait waits for a P to answer heartbeats. When they
// fit, yielding would only hand the worker's P to other goroutines and slow
// the handshakes.
func (s *Server) startHandshakePool() {
	yield := s.cfg.HandshakeWorkers+s.cfg.Loops > runtime.GOMAXPROCS(0)
	run := func(j hsJob) {
		s.runHandshake(j)
		if yield {
			runtime.Gosched()
		}
	}
	for range s.cfg.HandshakeWorkers {
		go func() {
			for {
				select {
				case j := <-s.sec.jobs:
					run(j)
					continue
				case <-s.done:
					return
				default:
				}
				if secure.Pregenerate() {
					continue
				}
				select {
				case j := <-s.sec.jobs:
					run(j)
				case <-s.done:
					return
				}
			}
		}()
	}
}

// startSecure runs at Start.
func (s *Server) startSecure() {
	if s.cfg.EphemeralStore > 0 {
		secure.SetEphemeralStore(s.cfg.EphemeralStore)
	}
	if s.cfg.Encryption != EncryptionOff && s.cfg.HandshakeWorkers > 0 {
		s.sec.poolOnce.Do(s.startHandshakePool)
	}
}

func (s *Server) runHandshake(j hsJob) {
	c := j.c
	if c.state.Load() != stateNew {
		return // closed while queued
	}
	var res hsResult
	if time.Since(j.queued) > s.cfg.AuthTimeout/2 { // the client has all but given up: don't spend the CPU
		s.sec.handshakes.WithLabelValues("shed").Inc()
		res = hsResult{out: s.wrapWS(c, s.connAdm.busyFrame(0)), code: codec.CodeServerBusy}
	} else {
		res = s.serverHandshake(j.ring, c, j.hello, j.peer)
	}
	_ = c.gc.AsyncWritev(nil, func(gc gnet.Conn, err error) error {
		if err != nil {
			return nil // closed meanwhile
		}
		return s.finishHello(gc, c, res)
	})
}

// finishHello applies a pool handshake's result on c's loop. Writing
// HELLO_OK can fail (the client reset the connection while its handshake
// was queued, common in a storm), and then gnet closes the connection inside
// Write, OnClose included: nothing more may be done with it.
func (s *Server) finishHello(gc gnet.Conn, c *conn, res hsResult) error {
	c.inHello = false
	code := s.applyHello(c, res)
	if gc.Context() == nil {
		return nil // closed by the failed write
	}
	if code != codec.OK {
		if s.closeOnLoop(c, code) == gnet.Close {
			return gc.Close()
		}
		return nil
	}
	if s.OnTraffic(gc) == gnet.Close { // bytes that arrived during the handshake
		return gc.Close()
	}
	return nil
}

// serverHandshake does the crypto and the token check; it touches nothing
// shared, so it may run on any goroutine.
func (s *Server) serverHandshake(ring *secure.KeyRing, c *conn, hello []byte, peer netip.AddrPort) hsResult {
	t0 := time.Now()
	defer func() { s.sec.hsTime.Observe(time.Since(t0).Seconds()) }()
	sh, payload, err := ring.Accept(hello, nil)
	if err != nil {
		code := codec.CodeBadHandshake
		if errors.Is(err, secure.ErrUnknownKey) {
			code = codec.CodeUnknownKey
			s.sec.handshakes.WithLabelValues("unknown_key").Inc()
		} else {
			s.sec.handshakes.WithLabelValues("bad_handshake").Inc()
			s.connLog.Warn("bad handshake", "conn", c.id, "remote", s.remote(c), "err", err)
		}
		return hsResult{out: s.wrapWS(c, errorFrame(code)), code: code}
	}
	// The first flight carries exactly one AUTH frame. checkAuth fills a
	// scratch conn: c's own fields are the loop's.
	tmp := &conn{gc: c.gc, id: c.id}
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
		code = s.checkAuth(tmp, af.Body)
	}
	var answer []byte
	if code == codec.OK {
		answer = s.appendAuthOKWith(make([]byte, 0, 128), tmp, s.nodesAt(peer, c.id, false)) // off the loop: the address was read on it
	} else {
		answer = errorFrame(code)
	}
	bodyLen := secure.DHLen + len(answer) + secure.TagSize
	out := make([]byte, 0, 10+codec.HeaderSize+bodyLen)
	if c.ws {
		out = wsHeader(out, 0x2, codec.HeaderSize+bodyLen)
	}
	out = codec.AppendHeader(out, codec.CmdHelloOK, codec.FlagEncrypted, 0, bodyLen)
	out, st, err := sh.Finish(out, answer)
	if err != nil {
		s.sec.handshakes.WithLabelValues("bad_handshake").Inc()
		return hsResult{out: s.wrapWS(c, errorFrame(codec.CodeBadHandshake)), code: codec.CodeBadHandshake}
	}
	if code != codec.OK {
		s.sec.handshakes.WithLabelValues("auth_refused").Inc()
	} else {
		s.sec.handshakes.WithLabelValues("ok").Inc()
	}
	return hsResult{out: out, st: st, code: code, uid: tmp.uid, device: tmp.device, network: tmp.network}
}

// applyHello writes a handshake's answer and installs its keys, on the loop.
func (s *Server) applyHello(c *conn, r hsResult) codec.Code {
	_, _ = c.gc.Write(r.out)
	if r.st != nil {
		c.sec.Store(r.st)
	}
	if r.code != codec.OK {
		c.closeCode.Store(uint32(r.code))
		return codeSent // the ERROR went out (in HELLO_OK when the keys exist)
	}
	c.uid, c.device, c.network = r.uid, r.device, r.network
	return codec.OK
}

func (s *Server) wrapWS(c *conn, frame []byte) []byte {
	if !c.ws {
		return frame
	}
	return append(wsHeader(make([]byte, 0, 10+len(frame)), 0x2, len(frame)), frame...)
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
			s.connLog.Warn("bad record", "conn", c.id, "remote", s.remote(c), "err", err)
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
	bb := sealRecord(c, st, frames)
	_, _ = c.gc.Write(bb.B)
	releaseSealed(bb)
}

// sealRecord seals frames as one record (in a WebSocket message on a
// WebSocket connection) into a pooled buffer; releaseSealed returns it.
func sealRecord(c *conn, st *secure.State, frames []byte) *bytebufferpool.ByteBuffer {
	bb := sealPool.Get()
	b := bb.B[:0]
	if c.ws {
		b = wsHeader(b, 0x2, len(frames)+secure.Overhead)
	}
	bb.B = st.Seal(b, frames)
	return bb
}

func releaseSealed(bb *bytebufferpool.ByteBuffer) {
	if cap(bb.B) > 64<<10 {
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
