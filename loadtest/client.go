package loadtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/secure"
)

// Connection states.
const (
	stIdle       uint8 = iota // not started yet, or waiting to reconnect
	stConnecting              // TCP connect in flight
	stUpgrading               // --ws: upgrade request sent, waiting for the 101
	stAuthing                 // AUTH sent, waiting for AUTH_OK
	stUp                      // established (authenticated, or connected to the floor)
	stDead                    // failed or closed; not reconnected
)

// floorMsg is the size of every floor message: the floor echoes 16 bytes.
const floorMsg = 16

// Floor message kinds, the first byte of a 16-byte floor message.
const (
	floorHeartbeat = 'H'
	floorCall      = 'R'
	floorPush      = 'P'
)

const (
	tick        = 5 * time.Millisecond
	reportEvery = 250 * time.Millisecond // stats lines to the parent
	maxOutbuf   = 256 << 10              // a connection's unsent bytes at most; more is dropped and counted
	readBufLen  = 64 << 10
)

// conn is one client connection: 104 bytes (88 before the two --encrypt
// pointers; an encrypted one adds an 80-byte secure.State), no goroutine, no
// timer.
type conn struct {
	t0    int64  // unix ns: connect started, then AUTH sent, then (slow) stopped reading
	hbAt  int64  // unix ns the outstanding heartbeat was sent (0 = none)
	rpcAt int64  // unix ns the outstanding call was sent (0 = none)
	part  []byte // unparsed tail of the inbound stream (rare: a frame split over reads)
	out   []byte // unsent tail of the outbound stream (rare: a full socket buffer)
	fd    int32
	gen   int32 // bumped on every (re)connect; tags epoll events
	seq   uint16
	rpcSq uint16
	code  uint16 // close code the server sent (ERROR or GOAWAY), 0 if none
	state uint8
	slow  bool // stopped reading (slow scenario)

	// --encrypt (secure.go): the handshake until HELLO_OK, then the record
	// state (80 bytes on the heap: two keys, two counters).
	hs  *secure.ClientHandshake
	sec *secure.State

	// --reconnect (fleet.go): when it went down, when to retry, where.
	downAt, retryAt int64
	tgt             uint16
	tries           uint8
}

// engine is one client worker's epoll loop over its connections.
type engine struct {
	spec    *childSpec
	ep      int
	conns   []conn
	target  unix.Sockaddr
	family  int
	sources []unix.Sockaddr
	ks      *auth.KeySet
	buf     []byte
	scratch []byte
	wsOut   []byte // --ws: the masked message being written
	sealed  []byte // --encrypt: the record being written
	pin     secure.PinnedKey
	rng     uint64 // --ws: masking keys
	now     int64

	// counters (cumulative)
	attempts, established, failed, dropped int64
	hbSent, pongs, rpcSent, rpcOK, rpcErr  int64
	pushRecv, reconnected, slowClosed      int64
	rxBytes, txBytes, writeBlocked, open   int64
	inflight                               int
	errors                                 map[string]int64
	hists                                  map[string]sparseHist
	times                                  map[string]int64
	extra                                  map[string]int64 // scenario counters
	policy                                 *policySeen

	// connect cursor: the ramp, then reconnect storms
	phase      string // "ramp" or "reconnect"
	cc         int    // next index to consider
	ccStart    int64  // phase start (unix ns)
	ccStarted  int    // connects started in this phase
	ccRate     float64
	phaseDone  bool
	rampDone   bool
	lastUp     int64
	hbInterval int64
	hbCursor   int
	hbAcc      float64
	toCursor   int
	toAcc      float64

	dt      int64 // ns since the previous tick
	scen    []workerScenario
	stopped bool

	fleet fleetState
}

func runClient(spec *childSpec, cmds <-chan string, out *statsWriter) error {
	e := &engine{
		spec:       spec,
		conns:      make([]conn, spec.Conns),
		buf:        make([]byte, readBufLen),
		errors:     map[string]int64{},
		hists:      map[string]sparseHist{},
		times:      map[string]int64{},
		extra:      map[string]int64{},
		hbInterval: spec.Heartbeat,
		phase:      "ramp",
		ccRate:     spec.Rate,
		rng:        uint64(time.Now().UnixNano()) | 1,
	}
	if e.hbInterval <= 0 {
		e.hbInterval = int64(30 * time.Second)
	}
	ap, err := netip.ParseAddrPort(spec.Target)
	if err != nil {
		return fmt.Errorf("target %q: %v", spec.Target, err)
	}
	e.target, e.family = sockaddr(ap.Addr(), ap.Port())
	if err := e.initFleet(); err != nil {
		return err
	}
	for i := range e.conns {
		e.conns[i].tgt = e.firstTarget(i)
	}
	if spec.Encrypt {
		if e.pin, err = secure.ParsePin(spec.ServerKey); err != nil {
			return err
		}
	}
	for _, s := range spec.Sources {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("source %q: %v", s, err)
		}
		sa, fam := sockaddr(a, 0)
		if fam != e.family {
			continue
		}
		e.sources = append(e.sources, sa)
	}
	if !spec.Floor {
		e.ks, err = auth.LoadKeyFile(spec.Keys)
		if err != nil {
			return fmt.Errorf("keys (--keys): %v", err)
		}
	}
	for _, n := range spec.Scenarios {
		if d, ok := scenarios[n]; ok && d.worker != nil {
			e.scen = append(e.scen, d.worker(e))
		}
	}
	e.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create: %v", err)
	}
	defer unix.Close(e.ep)

	// Ready, then wait for the parent's "start" so that every worker's
	// ramp (and the run's deadline) begins together however slowly the
	// workers came up.
	out.write(&childStats{ID: spec.ID, Role: "client", T: time.Now().UnixNano(), Ready: true})
	for c := range cmds {
		if c == "start" {
			break
		}
		if c == "stop" {
			return nil
		}
	}
	e.now = time.Now().UnixNano()
	hardStop := e.now + spec.HardStop
	e.ccStart = e.now
	e.times["ramp_start"] = e.now
	events := make([]unix.EpollEvent, 512)
	nextTick, lastTick := e.now, e.now
	nextReport := e.now + int64(reportEvery)
	for !e.stopped {
		n, err := unix.EpollWait(e.ep, events, int(tick/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("epoll_wait: %v", err)
		}
		e.now = time.Now().UnixNano()
		for i := 0; i < n; i++ {
			e.event(&events[i])
		}
		if e.now >= nextTick {
			nextTick = e.now + int64(tick)
			e.dt = e.now - lastTick
			lastTick = e.now
			e.tick()
		}
		select {
		case c := <-cmds:
			e.command(c)
		default:
		}
		if e.now >= nextReport || e.stopped {
			nextReport = e.now + int64(reportEvery)
			out.write(e.report(e.stopped))
		}
		if e.now >= hardStop && !e.stopped {
			e.stopped = true
			out.write(e.report(true))
		}
	}
	e.closeAll()
	return nil
}

func sockaddr(a netip.Addr, port uint16) (unix.Sockaddr, int) {
	if a.Is4() || a.Is4In6() {
		return &unix.SockaddrInet4{Addr: a.Unmap().As4(), Port: int(port)}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: int(port)}, unix.AF_INET6
}

func (e *engine) hist(name string) sparseHist {
	h := e.hists[name]
	if h == nil {
		h = sparseHist{}
		e.hists[name] = h
	}
	return h
}

// record adds a latency from start to now in microseconds.
func (e *engine) record(name string, start int64) {
	us := (e.now - start) / 1000
	if us < 1 {
		us = 1
	}
	e.hist(name).record(us)
}

func (e *engine) errorf(reason string) { e.errors[reason]++ }

func (e *engine) command(c string) {
	switch c {
	case "stop":
		e.stopped = true
	}
	for _, s := range e.scen {
		s.command(e, c)
	}
}

// startConn opens connection i: socket, bind to its source, connect.
func (e *engine) startConn(i int) {
	c := &e.conns[i]
	e.attempts++
	fd, err := unix.Socket(e.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		c.state = stDead
		e.failed++
		e.errorf("dial:" + errnoName(err))
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	for _, s := range e.scen {
		s.prepare(e, i, fd)
	}
	if len(e.sources) > 0 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, e.sources[(e.spec.First+i)%len(e.sources)]); err != nil {
			unix.Close(fd)
			c.state = stDead
			e.failed++
			e.errorf("dial:bind:" + errnoName(err))
			return
		}
	}
	c.fd = int32(fd)
	c.gen++
	c.t0 = e.now
	c.hbAt, c.rpcAt, c.code = 0, 0, 0
	c.part, c.out = nil, nil
	c.sec = nil // c.hs may hold this connection's prepared handshake (secure.go)
	c.slow = false
	c.state = stConnecting
	e.inflight++
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(i), Pad: c.gen}
	if err := unix.EpollCtl(e.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		e.fail(i, "dial:epoll:"+errnoName(err))
		return
	}
	if err := unix.Connect(fd, e.fleet.targets[c.tgt]); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		e.fail(i, "dial:"+errnoName(err))
	}
}

// fail ends a connection that never came up.
func (e *engine) fail(i int, reason string) {
	c := &e.conns[i]
	if c.state == stConnecting || c.state == stUpgrading || c.state == stAuthing {
		e.inflight--
	}
	e.failed++
	e.errorf(reason)
	e.closeFD(c, true)
	c.state = stDead
	if e.spec.Reconnect && c.downAt != 0 && !e.stopped {
		e.scheduleReconnect(i, false) // a reconnect that failed: back off, elsewhere
	}
}

// drop ends an established connection.
func (e *engine) drop(i int, reason string) {
	c := &e.conns[i]
	if c.state != stUp {
		e.fail(i, reason)
		return
	}
	e.open--
	e.dropped++
	e.errorf(reason)
	if c.slow {
		e.slowClosed++
		e.record("slow", c.t0)
	}
	e.closeFD(c, true)
	c.state = stDead
	if e.spec.Reconnect && !e.stopped {
		c.tries = 0
		e.scheduleReconnect(i, c.code == uint16(codec.CodeRedirect) && len(e.fleet.list) > 0)
	}
}

func (e *engine) closeFD(c *conn, rst bool) {
	if c.fd <= 0 {
		return
	}
	if rst {
		// An abortive close: no TIME_WAIT to hold the port, as a dropped
		// mobile link looks to the server.
		_ = unix.SetsockoptLinger(int(c.fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	unix.Close(int(c.fd))
	c.fd = 0
	c.part, c.out = nil, nil
	if c.sec == nil {
		c.hs = nil // a handshake in flight dies with its connection; a prepared one waits for the next
	}
	c.sec = nil
}

func (e *engine) closeAll() {
	for i := range e.conns {
		e.closeFD(&e.conns[i], true)
	}
}

// up marks connection i established.
func (e *engine) up(i int) {
	c := &e.conns[i]
	e.inflight--
	e.open++
	e.established++
	e.lastUp = e.now
	if e.phase == "reconnect" {
		e.reconnected++
	}
	if c.downAt != 0 {
		e.record("reconnect", c.downAt)
		e.extra["fleet_reconnects"]++
		c.downAt, c.tries = 0, 0
	}
	c.state = stUp
	for _, s := range e.scen {
		s.up(e, i)
	}
}

func (e *engine) event(ev *unix.EpollEvent) {
	i := int(ev.Fd)
	if i < 0 || i >= len(e.conns) {
		return
	}
	c := &e.conns[i]
	if c.gen != ev.Pad || c.fd <= 0 {
		return // stale event of a closed connection
	}
	hup := ev.Events&(unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0
	if c.state == stConnecting {
		if ev.Events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		soerr, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soerr != 0 {
			err = unix.Errno(soerr)
		}
		if err != nil {
			e.fail(i, "dial:"+errnoName(err))
			return
		}
		e.record("connect", c.t0)
		if e.spec.Floor {
			e.up(i)
		} else if e.spec.WS {
			c.state = stUpgrading
			c.t0 = e.now
			if !e.writeRaw(i, e.upgradeRequest()) {
				return
			}
		} else {
			c.state = stAuthing
			c.t0 = e.now
			first := e.authFrame(i)
			if e.spec.Encrypt {
				first = e.helloFrame(i, first)
			}
			if first == nil || !e.write(i, first) {
				return
			}
		}
	} else if ev.Events&unix.EPOLLOUT != 0 && len(c.out) > 0 {
		e.flush(i)
		if c.fd <= 0 {
			return
		}
	}
	if ev.Events&unix.EPOLLIN != 0 || hup {
		if c.slow && !hup {
			return // a slow consumer does not read
		}
		e.read(i, hup)
	}
}

// read drains connection i. With edge-triggered epoll a short read means the
// socket is empty, unless the peer hung up (then read to EOF).
func (e *engine) read(i int, toEOF bool) {
	c := &e.conns[i]
	for c.fd > 0 {
		n, err := unix.Read(int(c.fd), e.buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			e.closed(i, "reset")
			return
		}
		if n == 0 {
			e.closed(i, "eof")
			return
		}
		e.rxBytes += int64(n)
		data := e.buf[:n]
		fromPart := len(c.part) > 0
		if fromPart {
			c.part = append(c.part, data...)
			data = c.part
		}
		off, alive := e.parse(i, data)
		if !alive {
			return
		}
		switch rest := data[off:]; {
		case len(rest) == 0:
			c.part = nil
		case fromPart:
			c.part = c.part[:copy(c.part, rest)]
		default:
			c.part = append([]byte(nil), rest...)
		}
		if n < len(e.buf) && !toEOF {
			return
		}
	}
}

// closed handles the server closing connection i.
func (e *engine) closed(i int, how string) {
	c := &e.conns[i]
	reason := "closed:" + how
	if c.code != 0 {
		reason = "closed:" + codec.Code(c.code).String()
	}
	switch c.state {
	case stConnecting:
		e.fail(i, "dial:"+how)
	case stUpgrading:
		e.fail(i, "ws:upgrade:"+how)
	case stAuthing:
		if c.code != 0 {
			e.fail(i, "auth:"+codec.Code(c.code).String())
		} else {
			e.fail(i, "auth:"+reason)
		}
	default:
		e.drop(i, reason)
	}
}

// parse consumes whole frames (or floor messages) from data. It returns how
// many bytes it consumed and false if the connection was closed.
func (e *engine) parse(i int, data []byte) (int, bool) {
	c := &e.conns[i]
	off := 0
	if e.spec.Floor {
		for ; len(data)-off >= floorMsg; off += floorMsg {
			e.floorMsg(i, data[off:off+floorMsg])
		}
		return off, true
	}
	if e.spec.WS {
		return e.parseWS(i, data)
	}
	if c.hs != nil || c.sec != nil {
		return e.parseSealed(i, data)
	}
	for off < len(data) {
		f, n, err := codec.Split(data[off:], codec.MaxBodyLimit)
		if err != nil {
			e.errorf("protocol:" + err.Error())
			e.closed(i, "protocol")
			return off, false
		}
		if n == 0 {
			break
		}
		off += n
		if !e.frame(i, f) || c.fd <= 0 {
			return off, false
		}
	}
	return off, true
}

func (e *engine) floorMsg(i int, m []byte) {
	c := &e.conns[i]
	switch m[0] {
	case floorHeartbeat:
		if c.hbAt != 0 {
			e.record("heartbeat", c.hbAt)
			c.hbAt = 0
			e.pongs++
		}
	case floorCall:
		if c.rpcAt != 0 {
			e.record("rpc", c.rpcAt)
			c.rpcAt = 0
			e.rpcOK++
		}
	case floorPush:
		e.pushRecv++
		if sent := int64(binary.BigEndian.Uint64(m[1:9])); sent > 0 && sent <= e.now {
			e.record("push", sent)
		}
	default:
		for _, s := range e.scen {
			if s.floorMsg(e, i, m) {
				break
			}
		}
	}
}

// frame handles one gateway frame; false means the connection is gone.
func (e *engine) frame(i int, f codec.Frame) bool {
	c := &e.conns[i]
	switch f.Cmd {
	case codec.CmdAuthOK:
		if c.state != stAuthing {
			e.errorf("protocol:unexpected_auth_ok")
			return true
		}
		e.record("auth", c.t0)
		if len(e.fleet.pins) > 0 {
			var ok pb.AuthOK
			if proto.Unmarshal(f.Body, &ok) == nil {
				e.takeList(ok.Nodes)
			}
		}
		if e.policy == nil {
			var ok pb.AuthOK
			if proto.Unmarshal(f.Body, &ok) == nil && ok.Heartbeat != nil {
				hb := ok.Heartbeat
				e.policy = &policySeen{MinS: hb.MinIntervalS, MaxS: hb.MaxIntervalS, IdleS: hb.IdleTimeoutS}
				if m := int64(hb.MaxIntervalS) * int64(time.Second); m > 0 && e.hbInterval > m {
					e.hbInterval = m
				}
			}
		}
		e.up(i)
	case codec.CmdPong:
		if c.hbAt != 0 {
			e.record("heartbeat", c.hbAt)
			c.hbAt = 0
			e.pongs++
		}
	case codec.CmdResponse:
		if c.rpcAt != 0 && f.Seq == c.rpcSq {
			var r pb.Response
			if err := proto.Unmarshal(f.Body, &r); err != nil {
				e.rpcErr++
				e.errorf("rpc:bad_response")
				r.Code = uint32(codec.CodeSystem)
			} else if r.Code != 0 {
				e.rpcErr++
				e.errorf("rpc:" + codec.Code(r.Code).String())
			} else {
				e.rpcOK++
				e.record("rpc", c.rpcAt)
			}
			sent := c.rpcAt
			c.rpcAt = 0
			for _, s := range e.scen {
				s.response(e, i, r.Code, sent)
			}
		}
	case codec.CmdError:
		var m pb.Error
		_ = proto.Unmarshal(f.Body, &m)
		if m.Code >= 3000 {
			c.code = uint16(m.Code)
		} else {
			e.errorf("error:" + codec.Code(m.Code).String())
		}
	case codec.CmdGoAway:
		var m pb.GoAway
		_ = proto.Unmarshal(f.Body, &m)
		c.code = uint16(m.Code)
		if c.code == 0 {
			c.code = uint16(codec.CodeShutdown)
		}
		e.takeList(m.Nodes)
		e.errorf("goaway:" + codec.Code(c.code).String())
	case codec.CmdPush:
		e.pushRecv++
		fallthrough
	default:
		handled := false
		for _, s := range e.scen {
			if s.frame(e, i, f) {
				handled = true
			}
		}
		if !handled && f.Cmd != codec.CmdPush && f.Cmd != codec.CmdPolicy {
			e.errorf("frame:unexpected_" + f.Cmd.String())
		}
	}
	return c.fd > 0
}

func (e *engine) authFrame(i int) []byte {
	uid := e.spec.UIDBase + uint64(e.spec.First+i)
	dev := "lt" + strconv.FormatUint(uid, 10)
	tok, err := e.ks.Mint(uid, dev, time.Unix(0, e.now).Add(24*time.Hour))
	if err != nil {
		e.errorf("auth:mint")
	}
	body, _ := proto.Marshal(&pb.Auth{Token: tok, Device: dev, Network: pb.Network_NETWORK_WIFI, ClientVersion: "longlink-loadtest"})
	e.scratch = codec.AppendFrame(e.scratch[:0], codec.CmdAuth, 0, 0, body)
	return e.scratch
}

// write sends b (longlink frames, or floor messages) on connection i; with
// --ws as one masked binary WebSocket message.
func (e *engine) write(i int, b []byte) bool {
	if st := e.conns[i].sec; st != nil {
		e.sealed = st.Seal(e.sealed[:0], b)
		b = e.sealed
	}
	if e.spec.WS {
		b = e.wsWrap(wsOpBinary, b)
	}
	return e.writeRaw(i, b)
}

// writeRaw sends b on connection i, keeping what the socket did not take (up
// to maxOutbuf). It returns false if the connection was closed.
func (e *engine) writeRaw(i int, b []byte) bool {
	c := &e.conns[i]
	if len(c.out) > 0 {
		if c.slow || len(c.out)+len(b) > maxOutbuf {
			e.writeBlocked++
			return true
		}
		c.out = append(c.out, b...)
		return true
	}
	n, err := unix.Write(int(c.fd), b)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		e.closed(i, "reset")
		return false
	}
	if n < 0 {
		n = 0
	}
	e.txBytes += int64(n)
	if n < len(b) {
		c.out = append(c.out[:0], b[n:]...)
	}
	return true
}

func (e *engine) flush(i int) {
	c := &e.conns[i]
	n, err := unix.Write(int(c.fd), c.out)
	if err != nil {
		if !errors.Is(err, unix.EAGAIN) {
			e.closed(i, "reset")
		}
		return
	}
	e.txBytes += int64(n)
	c.out = c.out[n:]
	if len(c.out) == 0 {
		c.out = nil
	}
}

// respTimeout is the code scenarios' response hook gets for a call that
// timed out in the tool (no Response within --timeout).
const respTimeout = 1 << 31

// send writes one frame of cmd with body on connection i with the
// connection's next seq, which it returns with write's result.
func (e *engine) send(i int, cmd codec.Cmd, body []byte) (uint16, bool) {
	c := &e.conns[i]
	c.seq++
	e.scratch = codec.AppendFrame(e.scratch[:0], cmd, 0, c.seq, body)
	return c.seq, e.write(i, e.scratch)
}

// heartbeat sends a heartbeat on connection i unless one is outstanding.
func (e *engine) heartbeat(i int) {
	c := &e.conns[i]
	if c.state != stUp || c.slow || c.hbAt != 0 {
		return
	}
	c.seq++
	if e.spec.Floor {
		var m [floorMsg]byte
		m[0] = floorHeartbeat
		e.scratch = append(e.scratch[:0], m[:]...)
	} else {
		h := codec.HeaderOnly(codec.CmdHeartbeat, c.seq)
		e.scratch = append(e.scratch[:0], h[:]...)
	}
	c.hbAt = e.now
	e.hbSent++
	e.write(i, e.scratch)
}

// call sends one call (frame body prebuilt by the caller) on connection i
// unless a call is outstanding. It reports whether it sent.
func (e *engine) call(i int, body []byte) bool {
	c := &e.conns[i]
	if c.state != stUp || c.slow || c.rpcAt != 0 {
		return false
	}
	c.seq++
	c.rpcSq = c.seq
	if e.spec.Floor {
		var m [floorMsg]byte
		m[0] = floorCall
		e.scratch = append(e.scratch[:0], m[:]...)
	} else {
		e.scratch = codec.AppendFrame(e.scratch[:0], codec.CmdRequest, 0, c.seq, body)
	}
	c.rpcAt = e.now
	e.rpcSent++
	e.write(i, e.scratch)
	return true
}

func (e *engine) tick() {
	n := len(e.conns)
	// Connect cursor: the ramp at its rate, reconnects as fast as allowed.
	if !e.phaseDone {
		allowed := n
		if e.ccRate > 0 {
			allowed = int(e.ccRate*float64(e.now-e.ccStart)/1e9) + 1 - e.ccStarted
		}
		for e.cc < n && allowed > 0 && e.inflight < e.spec.Inflight {
			if e.conns[e.cc].state == stIdle {
				e.startConn(e.cc)
				e.ccStarted++
				allowed--
			}
			e.cc++
		}
		if e.cc >= n && e.inflight == 0 {
			e.phaseDone = true
			e.times[e.phase+"_end"] = e.lastUp
			if e.phase == "ramp" {
				e.rampDone = true
			}
			for _, s := range e.scen {
				s.phaseDone(e, e.phase)
			}
		}
	}
	// Heartbeat sweep: every connection once per interval, phases spread.
	// In the ramp it sweeps only the slots started so far, at their rate:
	// sweeping all n would send the whole run's heartbeat rate in bursts
	// over the few connected slots (every worker in step), which in the
	// encrypted million took the CPU the handshakes needed.
	m := n
	if !e.rampDone {
		m = e.cc
	}
	e.hbAcc += float64(m) * float64(e.dt) / float64(e.hbInterval)
	for ; e.hbAcc >= 1 && m > 0; e.hbAcc-- {
		e.hbCursor++
		if e.hbCursor >= m {
			e.hbCursor = 0
		}
		e.heartbeat(e.hbCursor)
	}
	// Timeout sweep: every connection once a second.
	e.toAcc += float64(n) * float64(e.dt) / float64(time.Second)
	to := e.spec.Timeout
	for ; e.toAcc >= 1; e.toAcc-- {
		e.toCursor++
		if e.toCursor >= n {
			e.toCursor = 0
		}
		i := e.toCursor
		c := &e.conns[i]
		switch c.state {
		case stConnecting:
			if e.now-c.t0 > to {
				e.fail(i, "timeout:connect")
			}
		case stUpgrading:
			if e.now-c.t0 > to {
				e.fail(i, "timeout:upgrade")
			}
		case stAuthing:
			if e.now-c.t0 > to {
				e.fail(i, "timeout:auth")
			}
		case stUp:
			if c.hbAt != 0 && e.now-c.hbAt > to {
				e.errorf("timeout:pong")
				c.hbAt = 0
			}
			if c.rpcAt != 0 && e.now-c.rpcAt > to {
				e.errorf("timeout:rpc")
				e.rpcErr++
				sent := c.rpcAt
				c.rpcAt = 0
				for _, s := range e.scen {
					s.response(e, i, respTimeout, sent)
				}
			}
		}
	}
	for _, s := range e.scen {
		s.tick(e)
	}
	if len(e.fleet.retryQ) > 0 {
		e.retries()
	}
}

// restart begins a reconnect storm: every established connection is dropped
// (abortively) and reconnected as fast as the in-flight cap allows.
func (e *engine) restart() {
	e.times["reconnect_start"] = e.now
	for i := range e.conns {
		c := &e.conns[i]
		if c.state == stUp {
			e.open--
			e.closeFD(c, true)
			c.state = stIdle
		}
	}
	e.phase = "reconnect"
	e.cc, e.ccStarted, e.ccStart, e.ccRate = 0, 0, e.now, 0
	e.phaseDone = false
}

func (e *engine) report(final bool) *childStats {
	st := &childStats{
		ID: e.spec.ID, Role: "client", T: e.now, RampDone: e.rampDone, Final: final,
		C: map[string]int64{
			"attempts": e.attempts, "established": e.established, "open": e.open, "failed": e.failed,
			"dropped": e.dropped, "inflight": int64(e.inflight), "hb_sent": e.hbSent, "pongs": e.pongs,
			"rpc_sent": e.rpcSent, "rpc_ok": e.rpcOK, "rpc_err": e.rpcErr, "push_recv": e.pushRecv,
			"reconnected": e.reconnected, "slow_closed": e.slowClosed, "rx_bytes": e.rxBytes,
			"tx_bytes": e.txBytes, "write_blocked": e.writeBlocked,
		},
		Times:  e.times,
		Errors: e.errors,
		Hists:  map[string][]int64{},
		Policy: e.policy,
	}
	for k, v := range e.extra {
		st.C[k] = v
	}
	for k, h := range e.hists {
		if len(h) > 0 {
			st.Hists[k] = h.pairs()
		}
	}
	return st
}

func errnoName(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		if n := unix.ErrnoName(en); n != "" {
			return n
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}
