// Package gateway owns the long-connection access server: gnet event loops
// holding client TCP connections, the AUTH handshake, heartbeats answered on
// the loop, idle eviction through a timing wheel, the session table, and the
// coroutine-style forwarding of calls to the backend on bounded goroutine
// pools. It also serves the admin HTTP endpoints. The supervisor of several
// worker processes on one port is package supervisor.
//
// Concurrency contract: each connection is owned by its event loop; other
// goroutines (forwarding workers, the wheel, drain) touch it only through
// gnet's goroutine-safe AsyncWrite and Close, and through the atomic fields of
// conn. Nothing on the loop blocks.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/secure"
)

// Server is one gateway worker.
type Server struct {
	reloader atomic.Pointer[func()] // POST /reload (SetReloader): what SIGHUP does
	gnet.BuiltinEventEngine

	cfg      Config // static after New
	log      *slog.Logger
	connLog  *rateLimitedLog
	metrics  *metrics
	wheel    *heartbeat.Wheel[conn]
	sessions *sessions
	fwd      *forwarder
	connAdm  *connAdmission
	switches *switchboard
	presence *presence
	push     *pusher                    // nil when Config.NATS is empty
	fleetP   atomic.Pointer[fleetState] // nil unless Config.Fleet (fleet.go)
	shake    *shaker                    // SHAKE and OPEN (shake.go)
	sec      secureState
	secKeys  atomic.Pointer[secure.KeyRing] // nil: encryption off (secure.go)

	secTicks    uint32 // wheel ticks per second (flood window)
	authTicks   uint32
	frameTicks  uint32
	frameChunk  int // bytes a half-received frame must gain per FrameTimeout window
	lingerTicks uint32
	finTicks    uint32 // after FIN, how long a closing connection waits for the client's
	pol         atomic.Pointer[policyState]

	proxied  peerTable // conn id → the client address a balancer's PROXY header named (proxyproto.go)
	orphans  sync.Map  // *conn → *orphanFD: sockets kept for answers after a client half-close (closing.go)
	nextID   atomic.Uint64
	draining atomic.Bool
	started  time.Time

	engMu  sync.Mutex
	eng    gnet.Engine
	addr   string
	boot   chan struct{}
	done   chan struct{}
	runErr error

	admin         *http.Server
	httpSrv       *http.Server
	httpMaxHeader int // HTTPConfig.MaxHeaderBytes
	adminAddr     string
	stopOnce      sync.Once
}

// New validates cfg, fills defaults and returns a server ready to Start.
func New(cfg Config) (*Server, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		metrics:  newMetrics(),
		sessions: newSessions(),
		boot:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	s.connLog = newRateLimitedLog(s.log, 20)
	s.wheel = heartbeat.NewWheel(cfg.WheelTick, 4096, s.expire)
	s.secTicks = max(1, s.wheel.Ticks(time.Second))
	s.authTicks = s.wheel.Ticks(cfg.AuthTimeout)
	s.frameTicks = s.wheel.Ticks(cfg.FrameTimeout)
	s.frameChunk = max(1, int(int64(cfg.MinFrameRate)*int64(cfg.FrameTimeout)/int64(time.Second)))
	s.lingerTicks = s.wheel.Ticks(cfg.CloseLinger)
	s.finTicks = min(s.wheel.Ticks(time.Second), 1<<15)
	s.pol.Store(s.newPolicyState(*cfg.Policies))
	s.connAdm = newConnAdmission(cfg.ConnAdmission)
	var err error
	if s.switches, err = newSwitchboard(s, cfg.SwitchesFile); err != nil {
		return nil, err
	}
	s.fwd = newForwarder(s)
	s.presence = newPresence(s)
	s.push = newPusher(s)
	s.shake = newShaker(s)
	s.initSecure()
	return s, nil
}

// Start binds the listener, starts the event loops, the wheel, the pools and
// the admin listener (if configured), and returns once clients can connect.
func (s *Server) Start() error {
	s.started = time.Now()
	s.switches.run(s.done)
	go s.returnMemory(10*time.Second, 1<<20)
	if w := s.cfg.ConnAdmission.FlapWindow; w > 0 && s.cfg.ConnAdmission.FlapMax > 0 {
		go func() {
			t := time.NewTicker(w)
			defer t.Stop()
			for {
				select {
				case now := <-t.C:
					s.connAdm.forget(now)
				case <-s.done:
					return
				}
			}
		}()
	}
	if err := s.push.start(); err != nil { // before the loops: presence needs the node
		return fmt.Errorf("gateway: push: %w", err)
	}
	s.wheel.Start()
	s.fwd.start()
	s.presence.start()
	s.startSecure()
	go func() {
		err := gnet.Run(s, "tcp://"+s.cfg.Listen,
			gnet.WithNumEventLoop(s.cfg.Loops),
			gnet.WithMulticore(s.cfg.Loops > 1),
			gnet.WithReusePort(s.cfg.ReusePort),
			gnet.WithReuseAddr(true), // restart on the same port at once, even after kill -9
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithLogger(gnetLogger{s.log}),
		)
		s.runErr = err
		close(s.done)
	}()
	select {
	case <-s.boot:
	case <-s.done:
		s.wheel.Stop()
		s.fwd.stop()
		s.presence.stop()
		s.push.close()
		return fmt.Errorf("gateway: listen %s: %w", s.cfg.Listen, s.runErr)
	}
	if err := s.startFleet(); err != nil {
		_ = s.Close()
		return err
	}
	s.log.Info("gateway listening", "addr", s.addr, "node", s.cfg.Node, "loops", s.cfg.Loops)
	return nil
}

// Addr returns the bound client address (useful with port 0).
func (s *Server) Addr() string { return s.addr }

// Node returns this worker's node id.
func (s *Server) Node() string { return s.cfg.Node }

// Done is closed when the event loops have stopped.
func (s *Server) Done() <-chan struct{} { return s.done }

// OnBoot records the engine and the bound address.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.engMu.Lock()
	s.eng = eng
	s.engMu.Unlock()
	s.addr = s.cfg.Listen
	if fd, err := eng.Dup(); err == nil {
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				s.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			case *unix.SockaddrInet6:
				s.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			}
		}
		unix.Close(fd)
	}
	close(s.boot)
	return gnet.None
}

// OnOpen sets up the per-connection state and the AUTH deadline.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	s.metrics.accepts.Inc()
	s.metrics.conns.Inc()
	c := &conn{gc: gc, id: s.nextID.Add(1)}
	gc.SetContext(c)
	if s.draining.Load() {
		c.closeCode.Store(uint32(codec.CodeShutdown))
		_, _ = gc.Write(s.drainFrame(c))
		return nil, s.linger(c) // so an AUTH already on its way is read, not answered by a reset
	}
	if !s.connAdm.accept(s.wheel.Len()) {
		c.closeCode.Store(uint32(codec.CodeServerBusy))
		s.connAdm.refused.Add(1)
		s.metrics.connRefused.WithLabelValues("accept_limit").Inc()
		_, _ = gc.Write(s.connAdm.busyFrame(0))
		return nil, s.linger(c)
	}
	if s.fromBalancer(gc) {
		c.flags.Or(flagProxyHeader)
	}
	s.wheel.Add(&c.hb, c, heartbeat.Never, s.wheel.Now()+s.authTicks)
	return nil, gnet.None
}

// OnClose releases the connection's state and reports it offline.
func (s *Server) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, _ := gc.Context().(*conn)
	if c == nil {
		return gnet.None
	}
	if c.state.Load() == stateAuthed && c.closeCode.Load() == 0 {
		// The client (half-)closed: answer the calls in flight anyway. Before
		// the state changes, so a worker that sees it closed sees the orphan.
		s.keepForAnswers(c)
	}
	prev := c.state.Swap(stateClosed)
	s.wheel.Remove(&c.hb)
	if len(s.cfg.ProxyProtocolFrom) > 0 {
		s.proxied.remove(c.id)
	}
	s.metrics.conns.Dec()
	if prev == stateAuthed {
		s.sessions.remove(c)
		s.metrics.sessions.Dec()
		s.presence.offline(c)
		s.push.lost(c, err) // push_lost.go
		s.connAdm.closed(c.uid, time.Now())
	}
	reason := "client"
	if code := codec.Code(c.closeCode.Load()); code != 0 {
		reason = code.String()
	} else if err != nil && !errors.Is(err, io.EOF) {
		reason = "io_error"
	}
	s.metrics.closes.WithLabelValues(reason).Inc()
	return gnet.None
}

// OnTraffic decodes every whole frame in the inbound bytes and handles it.
// Frames complete in gnet's buffer are handled in place, without a copy.
func (s *Server) OnTraffic(gc gnet.Conn) gnet.Action {
	c := gc.Context().(*conn)
	fl := c.flags.Load()     // one load for both checks on this hot path
	if fl&flagClosing != 0 { // the closing ERROR is queued: nothing more is read
		_, _ = gc.Discard(-1)
		return s.linger(c)
	}
	buf, _ := gc.Peek(-1)
	if fl&flagProxyHeader != 0 { // before anything else (proxyproto.go)
		if act, ok := s.proxyHeader(c, buf); !ok {
			return act
		}
		if buf, _ = gc.Peek(-1); len(buf) == 0 {
			return gnet.None
		}
	}
	if c.ws {
		return s.onWSTraffic(c, buf, 0)
	}
	if len(buf) > 0 && (buf[0] == 'G' || buf[0] == 'P' || buf[0] == '\r') && c.state.Load() == stateNew && c.sec.Load() == nil && !c.inHello {
		if buf[0] == 'G' {
			return s.upgrade(c, buf) // an HTTP GET: WebSocket on the same port
		}
		if looksLikeProxy(buf) {
			return s.refuseProxy(c) // not from a balancer network
		}
	}
	off, code := s.frames(c, buf)
	if code != codec.OK {
		return s.closeOnLoop(c, code)
	}
	if off > 0 { // Discard(0) would drop everything
		_, _ = gc.Discard(off)
	}
	s.afterTraffic(c, len(buf)-off, off > 0)
	if gc.OutboundBuffered() > s.cfg.MaxOutbound {
		return s.closeOnLoop(c, codec.CodeSlowConsumer)
	}
	return gnet.None
}

// frames handles the whole frames at the start of buf and returns how many
// bytes they took; a non-OK code means close the connection with it.
func (s *Server) frames(c *conn, buf []byte) (int, codec.Code) {
	if c.inHello {
		return 0, codec.OK // bytes wait until the handshake pool answers (secure.go)
	}
	if st := c.sec.Load(); st != nil {
		return s.records(c, st, buf) // sealed (secure.go)
	}
	off := 0
	for off < len(buf) {
		f, n, err := codec.Split(buf[off:], s.cfg.MaxBody)
		if err != nil {
			s.connLog.Warn("bad frame", "conn", c.id, "remote", s.remote(c), "err", err)
			return off, codec.ErrCode(err)
		}
		if n == 0 {
			break
		}
		off += n
		if code := s.handle(c, f); code != codec.OK {
			return off, code
		}
		if f.Cmd == codec.CmdHello { // the rest is sealed (secure.go)
			m, code := s.frames(c, buf[off:])
			return off + m, code
		}
	}
	return off, codec.OK
}

// afterTraffic applies the slow-frame rule, which judges progress, not
// age: a frame left half-received must, within each FrameTimeout window,
// complete or gain frameChunk bytes (MinFrameRate per second); each window
// it passes starts the next. rest is the half-received frame's buffered
// bytes, consumed whether whole frames went before it in this read. Only
// authenticated connections need this: before AUTH the auth deadline is hard.
func (s *Server) afterTraffic(c *conn, rest int, consumed bool) {
	if c.state.Load() != stateAuthed {
		return
	}
	switch {
	case rest == 0:
		if c.partial() {
			c.setPartial(false)
			s.wheel.Set(&c.hb, s.idleTicks(c.network), heartbeat.Never)
		}
		return
	case !c.partial() || consumed: // a new frame began: its first window
		c.setPartial(true)
	case rest-int(c.mark) < s.frameChunk:
		return // not yet a window's worth of progress
	default: // progress counts as activity
		s.wheel.Touch(&c.hb)
	}
	c.mark = uint32(rest)
	s.wheel.Set(&c.hb, s.idleTicks(c.network), s.wheel.Now()+s.frameTicks)
}

// send writes a protocol frame to c. Must run on c's event loop.
func (s *Server) send(c *conn, frame []byte) {
	if st := c.sec.Load(); st != nil {
		writeSealed(c, st, frame)
		return
	}
	if c.ws {
		_, _ = c.gc.Writev([][]byte{wsHeader(make([]byte, 0, 10), 0x2, len(frame)), frame})
		return
	}
	_, _ = c.gc.Write(frame)
}

// sendAsync queues a protocol frame to c from any goroutine; cb (may be nil)
// runs on the loop afterwards. frame must stay untouched until then.
func (s *Server) sendAsync(c *conn, frame []byte, cb gnet.AsyncCallback) error {
	if c.sec.Load() != nil {
		return sendSealedAsync(c, frame, cb)
	}
	if c.ws {
		return c.gc.AsyncWritev([][]byte{wsHeader(make([]byte, 0, 10), 0x2, len(frame)), frame}, cb)
	}
	return c.gc.AsyncWrite(frame, cb)
}

// handle processes one frame on the event loop. A non-OK code closes the
// connection with that code.
func (s *Server) handle(c *conn, f codec.Frame) codec.Code {
	s.metrics.framesIn[f.Cmd].Inc()
	if win := s.wheel.Now() / s.secTicks; win != c.rateWin {
		c.rateWin, c.frames = win, 0
	}
	if c.frames++; int(c.frames) > s.cfg.MaxFrameRate {
		return codec.CodeFlood
	}
	if code, done := s.beforeAuth(c, f); done { // HELLO and the encryption policy (secure.go)
		return code
	}
	if f.Flags != 0 {
		return codec.CodeProtocol // flags belong to HELLO only; compression is not spoken
	}
	if c.state.Load() != stateAuthed {
		if f.Cmd != codec.CmdAuth {
			return codec.CodeNotAuthed
		}
		return s.authenticate(c, f.Body)
	}
	s.wheel.Touch(&c.hb) // any inbound frame counts as liveness
	switch f.Cmd {
	case codec.CmdHeartbeat:
		// counted in longlink_frames_in_total{cmd="HEARTBEAT"} above
		if c.sec.Load() != nil {
			s.send(c, pongFrame(f.Seq))
		} else if c.ws {
			_, _ = c.gc.Write(wsPongFrame(f.Seq))
		} else {
			_, _ = c.gc.Write(pongFrame(f.Seq))
		}
	case codec.CmdRequest:
		s.fwd.submit(c, f.Seq, f.Body)
	case codec.CmdShake:
		s.shake.onShake(c, f.Seq)
	case codec.CmdOpen:
		s.shake.onOpen(c, f.Seq, f.Body)
	case codec.CmdAuth:
		return codec.CodeAuthTwice
	default:
		return codec.CodeProtocol
	}
	return codec.OK
}

// authenticate verifies the token locally and admits the connection.
func (s *Server) authenticate(c *conn, body []byte) codec.Code {
	if code := s.checkAuth(c, body); code != codec.OK {
		return code
	}
	return s.admit(c, true)
}

// checkAuth verifies AUTH's token and sets c's uid, device and network;
// it has no other effect (an encrypted first flight may be a replay:
// secure.go admits only after the client proves its keys).
func (s *Server) checkAuth(c *conn, body []byte) codec.Code {
	a, ok := parseAuth(body)
	if !ok {
		s.metrics.authMalformed.Inc()
		return codec.CodeBadAuth // the request is broken, not (necessarily) the token
	}
	claims, err := s.tokenKeys().VerifyBytes(a.token, time.Now())
	if err != nil {
		if errors.Is(err, auth.ErrExpired) {
			s.metrics.auths.WithLabelValues("expired").Inc()
			return codec.CodeTokenExpired
		}
		s.metrics.auths.WithLabelValues("invalid").Inc()
		s.connLog.Warn("auth rejected", "conn", c.id, "remote", s.remote(c), "err", err)
		return codec.CodeBadToken
	}
	device := claims.Device
	if device == "" {
		device = string(a.device)
	} else if len(a.device) > 0 && string(a.device) != device {
		s.metrics.auths.WithLabelValues("device_mismatch").Inc()
		return codec.CodeBadToken
	}
	if len(device) > auth.MaxDevice {
		s.metrics.authMalformed.Inc()
		return codec.CodeBadAuth // fix the device id; the token stays good
	}
	c.uid, c.device, c.network = claims.UID, device, a.network
	return codec.OK
}

// admit applies the flapping rule and puts a checked connection in the
// session table; sendOK writes AUTH_OK (an encrypted connection got it in
// HELLO_OK already).
func (s *Server) admit(c *conn, sendOK bool) codec.Code {
	held := 0
	if s.connAdm.flapOn() {
		held = s.sessions.count(c.uid)
	}
	if ban, flapping := s.connAdm.flapping(c.uid, time.Now(), held); flapping {
		s.connLog.Warn("flapping: connection refused", "conn", c.id, "uid", c.uid, "remote", s.remote(c), "ban", ban)
		s.metrics.connRefused.WithLabelValues("flapping").Inc()
		c.closeCode.Store(uint32(codec.CodeServerBusy))
		s.send(c, s.connAdm.busyFrame(ban))
		return codeSent
	}
	c.state.Store(stateAuthed)
	s.metrics.authOK.Inc()
	s.metrics.sessions.Inc()
	if old := s.sessions.add(c); old != nil {
		s.closeAsync(old, codec.CodeReplaced)
	}
	s.wheel.Set(&c.hb, s.idleTicks(c.network), heartbeat.Never)
	s.wheel.Touch(&c.hb)

	if sendOK {
		bb := respPool.Get()
		bb.B = s.appendAuthOK(bb.B[:0], c)
		s.send(c, bb.B)
		respPool.Put(bb)
	}
	s.presence.online(c)
	return codec.OK
}

// codeSent is an internal close code: close, the ERROR frame is already sent.
const codeSent codec.Code = 1

// closeOnLoop writes the ERROR frame for code and starts closing c: it
// returns gnet.Close only once everything queued has gone out, else
// gnet.None and c lingers (closing.go). Must run on c's event loop.
func (s *Server) closeOnLoop(c *conn, code codec.Code) gnet.Action {
	if c.closing() { // one ERROR per connection
		return s.linger(c)
	}
	if code == codeSent { // the caller already sent its own ERROR
		code = codec.Code(c.closeCode.Load())
		if c.ws {
			_, _ = c.gc.Write(wsClose(wsCloseForCode(code), code.String()))
		}
		return s.linger(c)
	}
	c.closeCode.Store(uint32(code))
	s.send(c, errorFrame(code))
	if c.ws {
		_, _ = c.gc.Write(wsClose(wsCloseForCode(code), code.String()))
	}
	return s.linger(c)
}

// closeAsync closes c from any goroutine after sending the ERROR for code.
func (s *Server) closeAsync(c *conn, code codec.Code) {
	if !c.closeCode.CompareAndSwap(0, uint32(code)) {
		return // already closing, with its own ERROR
	}
	_ = s.sendAsync(c, errorFrame(code), func(gc gnet.Conn, err error) error {
		if err != nil {
			return nil // already closed
		}
		if c.ws {
			_, _ = gc.Write(wsClose(wsCloseForCode(code), code.String()))
		}
		if s.linger(c) == gnet.Close {
			return gc.Close()
		}
		return nil
	})
}

// expire is the wheel's callback: the connections whose deadline passed.
func (s *Server) expire(batch []*conn) {
	for _, c := range batch {
		if c.closeCode.Load() != 0 { // lingering: see on its loop whether it has flushed
			_ = c.gc.Wake(nil)
			continue
		}
		switch c.state.Load() {
		case stateNew:
			s.metrics.evictions.WithLabelValues("auth_timeout").Inc()
			s.closeAsync(c, codec.CodeAuthTimeout)
		case stateAuthed:
			if c.partial() {
				s.metrics.evictions.WithLabelValues("frame_too_slow").Inc()
				s.closeAsync(c, codec.CodeFrameTooSlow)
				continue
			}
			s.metrics.evictions.WithLabelValues("stale").Inc()
			s.closeAsync(c, codec.CodeStale)
		}
	}
}

// ConnCount returns the number of open connections (all states).
func (s *Server) ConnCount() int { return s.wheel.Len() }

// SessionUsers returns the number of distinct authenticated users.
func (s *Server) SessionUsers() int { return s.sessions.users() }

// Close stops everything at once, without draining. Safe to call twice.
func (s *Server) Close() error {
	var err error
	s.stopOnce.Do(func() {
		s.stopFleet()  // leave the fleet: no list names this worker any more
		s.push.close() // say goodbye first: routers stop sending here
		s.engMu.Lock()
		eng := s.eng
		s.engMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = eng.Stop(ctx)
		<-s.done
		s.wheel.Stop()
		s.fwd.stop()
		s.shake.stop()
		s.presence.stop()
		if s.admin != nil {
			_ = s.admin.Close()
		}
		if s.httpSrv != nil {
			_ = s.httpSrv.Close()
		}
	})
	return err
}
