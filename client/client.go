// Package client is longlink's Go client SDK: it dials a gateway,
// authenticates, keeps the connection alive with heartbeats, makes calls,
// delivers pushes, and reconnects with jittered exponential backoff that
// honours the server's GOAWAY and ERROR hints. Integration tests use it; an
// app uses it as is.
//
// A Client is goroutine-safe. It runs two goroutines per live connection (a
// reader and a heartbeat ticker) plus one supervising the reconnect loop;
// callbacks (OnPush, OnState) run on the reader goroutine and must not block.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/secure"
)

// Options configure a Client. Addr (or Seeds) and Token (or TokenFunc)
// are required.
type Options struct {
	Addr      string // a seed address (host:port); Seeds may add more
	Token     string
	TokenFunc func(ctx context.Context) (string, error) // called before each AUTH when set (token refresh)
	Device    string
	Network   pb.Network

	// HeartbeatInterval fixes the heartbeat interval (0: adaptive, within the
	// server's policy: the client learns the longest interval its network's
	// NAT tolerates, per NetworkID, see heartbeat.Smart).
	HeartbeatInterval time.Duration
	// NetworkID names the network for adaptive heartbeats (for example
	// "wifi:<ssid hash>" or "cell:<carrier>"); learned state is kept per id.
	NetworkID string
	// HeartbeatStore persists learned intervals across app restarts (nil: memory).
	HeartbeatStore heartbeat.Store
	// Smart tunes the adaptive learner (zero: defaults).
	Smart heartbeat.SmartConfig
	// PongTimeout: no frame within this after a heartbeat means the link is dead.
	PongTimeout time.Duration // default 10s

	DialTimeout time.Duration // default 10s
	BackoffMin  time.Duration // default 500ms
	BackoffMax  time.Duration // default 60s
	// NoReconnect makes the Client stop at the first disconnect.
	NoReconnect bool

	// Encrypt speaks the HELLO handshake (Noise NK) before AUTH and seals
	// everything after it; it needs ServerKey or ServerKeys and never falls
	// back to plaintext (client/secure.go).
	Encrypt bool
	// ServerKey / ServerKeys pin the gateway's static public keys, as
	// printed by `longlink keys` ("<id>:<64 hex digits>"). The first is
	// used; a server answering 4011 unknown_server_key moves to the next.
	ServerKey  string
	ServerKeys []string
	// Suite is the cipher suite (0: ChaCha20-Poly1305; secure.SuiteAESGCM).
	Suite uint8

	// Fleet (docs/fleet.md, "Clients", client/fleet.go).
	// Seeds are the built-in addresses, used before any node list and when
	// every listed address is banned.
	Seeds []string
	// FleetPins pin the fleet's node-list signing keys ("<id>:<64 hex>", as
	// `longlink keys --fleet` prints them). Without pins node lists are
	// ignored and the client uses its seeds only.
	FleetPins []string
	// NodeListFile caches the newest verified list across restarts.
	NodeListFile string
	// NodeList is a signed list the app already has (FetchNodeList), used
	// from the first attempt if it verifies.
	NodeList *pb.SignedNodeList
	// NodesURL (e.g. http://host:7101/v1/nodes) is fetched when the list
	// held is missing or stale.
	NodesURL string
	// Race and RaceStagger: how many addresses are raced at once and how far
	// apart their starts are (defaults 2 and 250ms; a list overrides them).
	Race        int
	RaceStagger time.Duration
	// Dialer, when set, makes the TCP connections (tests, proxies).
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnNodeList hears each newly accepted list. Must not block.
	OnNodeList func(*pb.NodeList)
	// OnReconnect hears each reconnect's time, from losing the previous
	// connection to the new AUTH_OK, and the address it reached.
	OnReconnect func(took time.Duration, addr string)

	// OnPush receives server pushes. Must not block.
	OnPush func(*pb.Push)
	// OnState reports connection changes (err says why a connection ended).
	OnState func(State, error)
}

// State is the client's connection state.
type State int

const (
	Connecting State = iota
	Connected
	Disconnected
	Closed // terminal: Close was called, or the server said not to reconnect
)

func (s State) String() string {
	return [...]string{"connecting", "connected", "disconnected", "closed"}[s]
}

// CallError is a call answered with a non-zero code.
type CallError struct {
	Code       codec.Code
	Message    string
	RetryAfter time.Duration
}

func (e *CallError) Error() string {
	return fmt.Sprintf("longlink: call failed: %s (code %d): %s", e.Code, e.Code, e.Message)
}

// Temporary reports whether retrying later may succeed.
func (e *CallError) Temporary() bool { return e.Code.Retryable() }

// ServerClose is why the server closed a connection (from its ERROR or GOAWAY).
type ServerClose struct {
	Code       codec.Code
	Message    string
	RetryAfter time.Duration
	Redirect   string
	Nodes      *pb.SignedNodeList // GOAWAY 3014 redirect: where to go
}

func (e *ServerClose) Error() string {
	return fmt.Sprintf("longlink: closed by server: %s (code %d): %s", e.Code, e.Code, e.Message)
}

// Errors.
var (
	ErrClosed      = errors.New("longlink: client closed")
	ErrNotReady    = errors.New("longlink: not connected")
	ErrConnLost    = errors.New("longlink: connection lost before the answer arrived")
	ErrDeadLink    = errors.New("longlink: no answer to heartbeat (dead link)")
	ErrTooManyCall = errors.New("longlink: too many calls in flight")
)

// Client is a connection to a gateway that survives reconnects.
type Client struct {
	opts Options

	mu      sync.Mutex
	cur     *session // nil while not connected
	state   State
	ready   chan struct{} // closed when cur becomes usable; replaced on disconnect
	authOK  *pb.AuthOK
	lastErr error

	pins     []secure.PinnedKey            // Encrypt: the pinned server keys (secure.go)
	pinIdx   atomic.Int32                  // the pin in use
	prep     atomic.Pointer[preparedHello] // the next connection's handshake, made while idle (secure.go)
	prepUsed atomic.Int64                  // connections that started with a prepared handshake

	smart      *heartbeat.Smart  // nil with a fixed HeartbeatInterval; created at the first AUTH_OK
	config     *pb.ClientConfig  // last CONFIG (degrade mode); guarded by mu
	undegraded *[2]time.Duration // the backoff before a degrade level raised it; guarded by mu
	kick       chan struct{}     // wakes the heartbeat loop after a policy or mode change

	fleet    *fleet
	rstats   ReconnectStats // guarded by mu
	fetching atomic.Bool    // a NodesURL fetch runs
	lastGet  atomic.Int64   // unix nanos of the last NodesURL fetch

	closing  chan struct{}
	closeOne sync.Once
	done     chan struct{}
}

type session struct {
	nc       net.Conn
	wmu      sync.Mutex
	pmu      sync.Mutex
	pending  map[uint16]chan result
	seq      uint16
	lastSend atomic.Int64 // unix nanos of the last outbound frame
	pong     chan struct{}
	closed   chan struct{}
	once     sync.Once
	err      error
	sec      *secure.State // nil in plaintext; Seal under wmu, Open on the reader
	r        *frameReader
	ok       *pb.AuthOK
	addr     string
}

type result struct {
	raw []byte // the answer's body: RESPONSE, SHAKE_RESP or OPEN_RESP
	err error
}

// maxDevice is the protocol's limit on a device id (docs/protocol.md).
const maxDevice = 64

// Dial connects and authenticates, returning once the first AUTH_OK arrives
// (or the first attempt fails with an error that forbids reconnecting, or
// ctx ends). Afterwards the Client reconnects by itself until Close.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	if (opts.Addr == "" && len(opts.Seeds) == 0) || (opts.Token == "" && opts.TokenFunc == nil) {
		return nil, errors.New("longlink: Options.Addr (or Seeds) and Token are required")
	}
	var pins []FleetPin
	for _, s := range opts.FleetPins {
		p, err := ParseFleetPin(s)
		if err != nil {
			return nil, err
		}
		pins = append(pins, p)
	}
	seeds := append([]string(nil), opts.Seeds...)
	if opts.Addr != "" && !slices.Contains(seeds, opts.Addr) {
		seeds = append([]string{opts.Addr}, seeds...)
	}
	if opts.Race <= 0 {
		opts.Race = DefaultRace
	}
	if opts.RaceStagger <= 0 {
		opts.RaceStagger = DefaultRaceStagger
	}
	if len(opts.Device) > maxDevice {
		// The server would refuse it with 4005 bad_auth on every attempt.
		return nil, fmt.Errorf("longlink: Options.Device is %d bytes, at most %d", len(opts.Device), maxDevice)
	}
	if opts.PongTimeout <= 0 {
		opts.PongTimeout = 10 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = 500 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 60 * time.Second
	}
	c := &Client{opts: opts, ready: make(chan struct{}), closing: make(chan struct{}), done: make(chan struct{}), kick: make(chan struct{}, 1),
		fleet: newFleet(seeds, pins, opts.NodeListFile)}
	if opts.NodeList != nil {
		if _, err := c.fleet.accept(opts.NodeList); err != nil {
			return nil, err
		}
	}
	if err := c.initSecure(); err != nil {
		return nil, err
	}
	go c.run()
	if err := c.WaitReady(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// WaitReady blocks until the client is connected and authenticated.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		c.mu.Lock()
		ready, state, lastErr := c.ready, c.state, c.lastErr
		c.mu.Unlock()
		if state == Closed {
			if lastErr != nil {
				return lastErr
			}
			return ErrClosed
		}
		select {
		case <-ready:
			return nil
		case <-c.done:
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		}
	}
}

// AuthOK returns the server's answer to the current connection's AUTH.
func (c *Client) AuthOK() *pb.AuthOK {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.authOK
}

// State returns the current connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Close ends the client and its connection. Calls in flight fail.
func (c *Client) Close() error {
	c.closeOne.Do(func() { close(c.closing) })
	<-c.done
	return nil
}

func (c *Client) setState(s State, err error) {
	c.mu.Lock()
	c.state = s
	if err != nil {
		c.lastErr = err
	}
	c.mu.Unlock()
	if c.opts.OnState != nil {
		c.opts.OnState(s, err)
	}
}

// run is the reconnect loop.
func (c *Client) run() {
	defer close(c.done)
	preferred := "" // a GOAWAY's single redirect address, until it fails
	attempt := 0
	var lostAt time.Time // when the last connection ended (zero before the first)
	for {
		c.setState(Connecting, nil)
		c.refreshList()
		s, err := c.race(preferred)
		var hint time.Duration
		if err != nil && preferred != "" {
			preferred = ""
		}
		if err == nil {
			attempt = 0
			c.adopt(s)
			c.mu.Lock()
			c.cur = s
			c.rstats.Addr = s.addr
			var took time.Duration
			if !lostAt.IsZero() {
				took = time.Since(lostAt)
				c.rstats.Reconnects++
				c.rstats.Last = took
			}
			close(c.ready)
			c.mu.Unlock()
			if !lostAt.IsZero() && c.opts.OnReconnect != nil {
				c.opts.OnReconnect(took, s.addr)
			}
			c.setState(Connected, nil)
			select {
			case <-s.closed:
				err = s.err
			case <-c.closing:
				s.close(ErrClosed)
			}
			lostAt = time.Now()
			c.mu.Lock()
			c.cur = nil
			c.rstats.Addr = ""
			c.ready = make(chan struct{})
			c.mu.Unlock()
			var sc *ServerClose
			if !errors.As(err, &sc) {
				c.fleet.fail(s.addr) // lost without a goodbye: the host may be gone
			} else if sc.Code == codec.CodeRedirect {
				c.fleet.avoid(s.addr, redirectAvoid) // it sent us away: go elsewhere for a while
			}
		}
		select {
		case <-c.closing:
			c.setState(Closed, nil)
			return
		default:
		}
		if errors.Is(err, ErrForgedServer) { // never retried, never in plaintext
			c.setState(Closed, err)
			return
		}
		var sc *ServerClose
		if errors.As(err, &sc) {
			if !sc.Code.Reconnect() {
				c.setState(Closed, err)
				return
			}
			hint = sc.RetryAfter
			if sc.Nodes != nil {
				// A verified list to follow (newer or not than the one held):
				// go now, paced by the server's redirect rate, not after a
				// random backoff that would bunch the arrivals elsewhere.
				if _, err := c.AcceptNodeList(sc.Nodes); err == nil && sc.Code == codec.CodeRedirect && hint <= 0 {
					hint = time.Millisecond
				}
			}
			if sc.Redirect != "" {
				preferred = sc.Redirect
			}
		}
		c.setState(Disconnected, err)
		if c.opts.NoReconnect {
			c.setState(Closed, err)
			return
		}
		attempt++
		delay := c.backoff(attempt, hint)
		select {
		case <-time.After(delay):
		case <-c.closing:
			c.setState(Closed, nil)
			return
		}
	}
}

// backoff is full-jitter exponential backoff, never shorter than the
// server's hint (a GOAWAY of 0 ms after a drain reconnects at once).
func (c *Client) backoff(attempt int, hint time.Duration) time.Duration {
	if hint > 0 && attempt <= 1 {
		return hint
	}
	c.mu.Lock()
	lo, hi := c.opts.BackoffMin, c.opts.BackoffMax // the server may change them (CONFIG)
	c.mu.Unlock()
	ceil := lo << min(attempt, 16)
	if ceil > hi || ceil <= 0 {
		ceil = hi
	}
	d := lo/2 + time.Duration(rand.Int64N(int64(ceil)))
	return max(d, hint)
}

// connect dials and authenticates; adopt starts the reader and heartbeat
// of the one that wins a race. Cancelling ctx aborts the handshake.
func (c *Client) connect(ctx context.Context, addr string) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	tok := c.opts.Token
	if c.opts.TokenFunc != nil {
		var err error
		if tok, err = c.opts.TokenFunc(ctx); err != nil {
			return nil, fmt.Errorf("longlink: token: %w", err)
		}
	}
	dial := c.opts.Dialer
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// A lost race or Close cuts the handshake short.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	s := &session{nc: nc, addr: addr, pending: map[uint16]chan result{}, closed: make(chan struct{}), pong: make(chan struct{}, 1)}
	body, _ := proto.Marshal(&pb.Auth{Token: tok, Device: c.opts.Device, Network: c.opts.Network, ClientVersion: "longlink-go"})
	_ = nc.SetDeadline(time.Now().Add(c.opts.DialTimeout))
	r, f, err := c.hello(s, codec.AppendFrame(nil, codec.CmdAuth, 0, 0, body))
	if err != nil {
		nc.Close()
		return nil, err
	}
	switch f.Cmd {
	case codec.CmdAuthOK:
	case codec.CmdError, codec.CmdGoAway: // a GOAWAY here: the host was draining when we connected
		nc.Close()
		return nil, serverClose(f)
	default:
		nc.Close()
		return nil, fmt.Errorf("longlink: unexpected %v before AUTH_OK", f.Cmd)
	}
	var ok pb.AuthOK
	if err := proto.Unmarshal(f.Body, &ok); err != nil {
		nc.Close()
		return nil, fmt.Errorf("longlink: bad AUTH_OK: %w", err)
	}
	if err := c.confirm(s, r); err != nil {
		nc.Close()
		return nil, err
	}
	if !stop() {
		return nil, ctx.Err()
	}
	_ = nc.SetDeadline(time.Time{})
	s.r, s.ok = r, &ok
	return s, nil
}

// adopt makes s the client's connection: its AUTH_OK's policy and node
// list, its reader and heartbeat.
func (c *Client) adopt(s *session) {
	ok := s.ok
	if ok.Nodes != nil {
		_, _ = c.AcceptNodeList(ok.Nodes)
	}
	c.mu.Lock()
	c.authOK = ok
	if c.opts.HeartbeatInterval <= 0 && ok.Heartbeat != nil {
		pol := heartbeat.FromProto(ok.Heartbeat)
		if c.smart == nil {
			c.smart = heartbeat.NewSmart(pol, c.opts.NetworkID, c.opts.HeartbeatStore, c.opts.Smart)
		} else {
			c.smart.SetPolicy(pol)
		}
	}
	c.mu.Unlock()
	go c.read(s, s.r)
	go c.heartbeat(s, ok)
}

func serverClose(f codec.Frame) *ServerClose {
	switch f.Cmd {
	case codec.CmdGoAway:
		var g pb.GoAway
		_ = proto.Unmarshal(f.Body, &g)
		return &ServerClose{Code: codec.Code(g.Code), Message: g.Message, RetryAfter: time.Duration(g.ReconnectAfterMs) * time.Millisecond, Redirect: g.Redirect, Nodes: g.Nodes}
	default:
		var e pb.Error
		_ = proto.Unmarshal(f.Body, &e)
		return &ServerClose{Code: codec.Code(e.Code), Message: e.Message, RetryAfter: time.Duration(e.RetryAfterMs) * time.Millisecond}
	}
}

func (s *session) close(err error) {
	s.once.Do(func() {
		s.err = err
		s.nc.Close()
		s.pmu.Lock()
		for seq, ch := range s.pending {
			ch <- result{err: ErrConnLost}
			delete(s.pending, seq)
		}
		s.pmu.Unlock()
		close(s.closed)
	})
}

func (s *session) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if s.sec != nil {
		b = s.sec.Seal(make([]byte, 0, len(b)+secure.Overhead), b)
	}
	_, err := s.nc.Write(b)
	s.lastSend.Store(time.Now().UnixNano())
	return err
}

func (c *Client) read(s *session, r *frameReader) {
	for {
		f, err := r.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = ErrConnLost
			}
			s.close(err)
			return
		}
		switch f.Cmd {
		case codec.CmdResponse, codec.CmdShakeRsp, codec.CmdOpenRsp:
			s.deliverRaw(f.Seq, f.Body)
		case codec.CmdPush:
			if c.opts.OnPush != nil {
				var p pb.Push
				if proto.Unmarshal(f.Body, &p) == nil {
					c.opts.OnPush(&p)
				}
			}
		case codec.CmdPong:
			select {
			case s.pong <- struct{}{}:
			default:
			}
		case codec.CmdPolicy:
			var hp pb.HeartbeatPolicy
			if proto.Unmarshal(f.Body, &hp) == nil {
				c.applyPolicy(&hp)
			}
		case codec.CmdConfig:
			var cc pb.ClientConfig
			if proto.Unmarshal(f.Body, &cc) == nil {
				c.applyConfig(&cc)
			}
		case codec.CmdGoAway, codec.CmdError:
			s.close(serverClose(f))
			return
		}
	}
}

// applyConfig takes a CONFIG frame (the server's degrade mode): heartbeat
// policy and reconnect backoff; the shake hints are kept for Shake callers.
func (c *Client) applyConfig(cc *pb.ClientConfig) {
	if cc.Nodes != nil {
		_, _ = c.AcceptNodeList(cc.Nodes)
	}
	c.mu.Lock()
	c.config = cc
	// Degrade levels raise the backoff; level 0 carries no backoff (zero
	// is "unchanged"), so the client puts back what it had before.
	if cc.DegradeLevel == 0 && c.undegraded != nil {
		c.opts.BackoffMin, c.opts.BackoffMax = c.undegraded[0], c.undegraded[1]
		c.undegraded = nil
	} else if cc.DegradeLevel > 0 && c.undegraded == nil {
		c.undegraded = &[2]time.Duration{c.opts.BackoffMin, c.opts.BackoffMax}
	}
	if cc.BackoffMinMs > 0 {
		c.opts.BackoffMin = time.Duration(cc.BackoffMinMs) * time.Millisecond
	}
	if cc.BackoffMaxMs > 0 {
		c.opts.BackoffMax = time.Duration(cc.BackoffMaxMs) * time.Millisecond
	}
	c.mu.Unlock()
	if cc.Heartbeat != nil {
		c.applyPolicy(cc.Heartbeat)
	}
}

// DegradeConfig returns the last CONFIG the server sent (nil if none): its
// degrade level and the levers it asks the client to apply.
func (c *Client) DegradeConfig() *pb.ClientConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.config
}

// applyPolicy takes a POLICY frame from the server.
func (c *Client) applyPolicy(hp *pb.HeartbeatPolicy) {
	c.mu.Lock()
	if c.authOK != nil {
		ok := proto.Clone(c.authOK).(*pb.AuthOK)
		ok.Heartbeat = hp
		c.authOK = ok
	}
	smart := c.smart
	c.mu.Unlock()
	if smart != nil {
		smart.SetPolicy(heartbeat.FromProto(hp))
	}
	c.wake()
}

func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// HeartbeatPolicy returns the server's current heartbeat policy (from
// AUTH_OK or a later POLICY frame), or nil before the first AUTH_OK.
func (c *Client) HeartbeatPolicy() *pb.HeartbeatPolicy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.authOK.GetHeartbeat()
}

// HeartbeatInterval returns the interval the client currently waits.
func (c *Client) HeartbeatInterval() time.Duration {
	c.mu.Lock()
	smart := c.smart
	c.mu.Unlock()
	if smart == nil {
		return c.opts.HeartbeatInterval
	}
	return smart.Interval()
}

// SetForeground switches adaptive heartbeats between the short foreground
// interval (the policy's minimum, while the user looks at the app) and the
// learned background interval.
func (c *Client) SetForeground(fg bool) {
	c.mu.Lock()
	smart := c.smart
	c.mu.Unlock()
	if smart != nil {
		smart.SetForeground(fg)
	}
	c.wake()
}

// SetNetwork tells the adaptive heartbeat that the device moved to another
// network (learned state is kept per network id). Reconnecting is the app's
// call; the gateway's policy for the new network arrives with the next AUTH_OK.
func (c *Client) SetNetwork(id string) {
	c.mu.Lock()
	smart := c.smart
	c.opts.NetworkID = id
	c.mu.Unlock()
	if smart != nil {
		smart.SetNetwork(id)
	}
	c.wake()
}

// heartbeat sends a HEARTBEAT after each full interval of silence (any frame
// the client sends resets it; frames from the server do not, because the
// server's idle timer only counts what it receives) and
// declares the link dead when no PONG arrives within PongTimeout. With
// adaptive heartbeats each answered or unanswered HEARTBEAT teaches the
// learner whether the network tolerates that interval.
func (c *Client) heartbeat(s *session, ok *pb.AuthOK) {
	first := time.Duration(ok.GetHeartbeat().GetFirstIntervalS()) * time.Second
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		c.mu.Lock()
		smart := c.smart
		c.mu.Unlock()
		iv := c.opts.HeartbeatInterval
		if iv <= 0 && smart != nil {
			iv = smart.Interval()
		} else if iv <= 0 {
			iv = 30 * time.Second // a server that sent no policy
		}
		learn := smart != nil
		if first > 0 && first < iv { // the server's jittered first beat: spreads load, teaches nothing
			iv, learn = first, false
		}
		last := s.lastSend.Load()
		wait := time.Until(time.Unix(0, last).Add(iv))
		if wait > 0 {
			t.Reset(wait)
			select {
			case <-s.closed:
				return
			case <-c.kick:
				t.Stop()
				continue
			case <-t.C:
				continue // re-check: traffic may have reset the silence
			}
		}
		first = 0
		select {
		case <-s.pong:
		default:
		}
		if err := s.write(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 0, nil)); err != nil {
			s.close(err)
			return
		}
		t.Reset(c.opts.PongTimeout)
		select {
		case <-s.closed:
			return
		case <-s.pong:
			t.Stop()
			if learn {
				smart.OnSuccess()
			}
		case <-t.C:
			if learn {
				smart.OnFailure()
			}
			s.close(ErrDeadLink)
			return
		}
	}
}

// Call invokes method on the backend through the gateway and returns its
// answer. A non-zero answer code is returned as *CallError. If the
// connection drops before the answer, Call returns ErrConnLost: the call may
// or may not have run.
func (c *Client) Call(ctx context.Context, method string, body []byte) ([]byte, error) {
	req := &pb.Request{Method: method, Body: body}
	if dl, ok := ctx.Deadline(); ok {
		req.TimeoutMs = uint32(max(time.Until(dl).Milliseconds(), 1))
	}
	payload, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	raw, err := c.roundTrip(ctx, codec.CmdRequest, payload)
	if err != nil {
		return nil, err
	}
	var resp pb.Response
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return nil, fmt.Errorf("longlink: bad RESPONSE: %w", err)
	}
	if resp.Code != 0 {
		return nil, &CallError{Code: codec.Code(resp.Code), Message: resp.Message, RetryAfter: time.Duration(resp.RetryAfterMs) * time.Millisecond}
	}
	return resp.Body, nil
}

// frameReader reads whole frames from a stream.
type frameReader struct {
	r   io.Reader
	buf []byte
}

func (fr *frameReader) next() (codec.Frame, error) {
	for {
		f, n, err := codec.Split(fr.buf, codec.MaxBodyLimit)
		if err != nil {
			return f, err
		}
		if n > 0 {
			f.Body = append([]byte(nil), f.Body...)
			fr.buf = fr.buf[:copy(fr.buf, fr.buf[n:])]
			return f, nil
		}
		if len(fr.buf) == cap(fr.buf) {
			fr.buf = append(fr.buf, make([]byte, cap(fr.buf))...)[:len(fr.buf)]
		}
		m, err := fr.r.Read(fr.buf[len(fr.buf):cap(fr.buf)])
		fr.buf = fr.buf[:len(fr.buf)+m]
		if err != nil && m == 0 {
			return f, err
		}
	}
}
