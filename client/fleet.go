package client

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
)

// A fleet client (docs/fleet.md, "Clients"): it starts from built-in seed
// addresses, takes signed node lists from AUTH_OK, CONFIG, a GOAWAY 3014
// redirect or GET /v1/nodes, trusts a list only if its key id is pinned and
// its Ed25519 signature verifies, keeps the newest, races the list's first
// addresses with staggered starts, bans addresses that fail (1 s doubling
// to 5 min), and falls back to the seeds when every listed address is
// banned or the list is empty.

// nodeListContext is the signature's domain separation (docs/fleet.md).
const nodeListContext = "longlink node list v1"

// Defaults of the racing and banning rules (a list may change the first two).
const (
	DefaultRace        = 2
	DefaultRaceStagger = 250 * time.Millisecond
	banMin             = time.Second
	banMax             = 5 * time.Minute
	maxListNodes       = 5
)

// FleetPin is a pinned fleet signing key.
type FleetPin struct {
	ID     uint32
	Public ed25519.PublicKey
}

// ParseFleetPin reads "<key id>:<public key as 64 hex digits>", as
// `longlink keys --fleet` prints it.
func ParseFleetPin(s string) (FleetPin, error) {
	id, h, ok := strings.Cut(strings.TrimSpace(s), ":")
	n, err := strconv.ParseUint(id, 10, 32)
	if !ok || err != nil {
		return FleetPin{}, fmt.Errorf("longlink: fleet pin %q: want <key id>:<64 hex digits>", s)
	}
	k, err := hex.DecodeString(h)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return FleetPin{}, fmt.Errorf("longlink: fleet pin %q: want <key id>:<64 hex digits>", s)
	}
	return FleetPin{ID: uint32(n), Public: k}, nil
}

// Errors of node list verification.
var (
	ErrUnpinnedList = errors.New("longlink: node list signed by a key that is not pinned")
	ErrBadListSig   = errors.New("longlink: node list signature does not verify")
)

// VerifyNodeList checks a signed list against pins and decodes it.
func VerifyNodeList(sl *pb.SignedNodeList, pins []FleetPin) (*pb.NodeList, error) {
	if sl == nil || len(sl.List) == 0 {
		return nil, errors.New("longlink: empty node list")
	}
	var pub ed25519.PublicKey
	for _, p := range pins {
		if p.ID == sl.KeyId {
			pub = p.Public
			break
		}
	}
	if pub == nil {
		return nil, fmt.Errorf("%w (key %d)", ErrUnpinnedList, sl.KeyId)
	}
	msg := make([]byte, 0, len(nodeListContext)+1+len(sl.List))
	msg = append(append(append(msg, nodeListContext...), 0), sl.List...)
	if !ed25519.Verify(pub, msg, sl.Signature) {
		return nil, ErrBadListSig
	}
	var l pb.NodeList
	if err := proto.Unmarshal(sl.List, &l); err != nil {
		return nil, fmt.Errorf("longlink: bad node list: %w", err)
	}
	if len(l.Nodes) > maxListNodes {
		l.Nodes = l.Nodes[:maxListNodes]
	}
	return &l, nil
}

// fleet is a client's node list state.
type fleet struct {
	seeds []string
	pins  []FleetPin
	file  string // optional cache file of the signed list

	mu       sync.Mutex
	list     *pb.NodeList
	signed   *pb.SignedNodeList
	received time.Time
	bans     map[string]*ban
	now      func() time.Time
}

type ban struct {
	fails int
	until time.Time
}

func newFleet(seeds []string, pins []FleetPin, file string) *fleet {
	f := &fleet{seeds: seeds, pins: pins, file: file, bans: map[string]*ban{}, now: time.Now}
	if file != "" {
		if b, err := os.ReadFile(file); err == nil {
			var sl pb.SignedNodeList
			if proto.Unmarshal(b, &sl) == nil {
				_, _ = f.accept(&sl)
			}
		}
	}
	return f
}

// accept takes a signed list if it verifies and is newer than the one held.
// It reports whether the list replaced the current one.
func (f *fleet) accept(sl *pb.SignedNodeList) (bool, error) {
	if sl == nil {
		return false, nil
	}
	if len(f.pins) == 0 {
		return false, ErrUnpinnedList
	}
	l, err := VerifyNodeList(sl, f.pins)
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	if f.list != nil && l.IssuedMs <= f.list.IssuedMs {
		f.mu.Unlock()
		return false, nil
	}
	f.list, f.signed, f.received = l, sl, f.now()
	f.mu.Unlock()
	if f.file != "" {
		if b, err := proto.Marshal(sl); err == nil {
			tmp := f.file + ".tmp"
			if os.MkdirAll(filepath.Dir(f.file), 0o700) == nil && os.WriteFile(tmp, b, 0o600) == nil {
				_ = os.Rename(tmp, f.file)
			}
		}
	}
	return true, nil
}

// current returns the list held (nil: none) and whether it is stale
// (older than its ttl_s: still used, but a fresh one should be fetched).
func (f *fleet) current() (*pb.NodeList, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.list == nil {
		return nil, false
	}
	ttl := time.Duration(f.list.TtlS) * time.Second
	issued := time.UnixMilli(f.list.IssuedMs)
	return f.list, ttl > 0 && f.now().Sub(issued) > ttl
}

// candidates is the order to try: the list's unbanned addresses, or, when
// none is left, the unbanned seeds; with everything banned, the seeds
// anyway, soonest-unbanned first (the backoff between attempts paces them).
func (f *fleet) candidates() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	var out []string
	if f.list != nil {
		for _, n := range f.list.Nodes {
			if n.Addr != "" && !f.bannedLocked(n.Addr, now) {
				out = append(out, n.Addr)
			}
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, s := range f.seeds {
		if !f.bannedLocked(s, now) {
			out = append(out, s)
		}
	}
	if len(out) > 0 {
		return out
	}
	out = append(out, f.seeds...)
	sortByBan(out, f.bans)
	return out
}

func sortByBan(addrs []string, bans map[string]*ban) {
	until := func(a string) time.Time {
		if b := bans[a]; b != nil {
			return b.until
		}
		return time.Time{}
	}
	for i := 1; i < len(addrs); i++ { // a handful: insertion sort
		for j := i; j > 0 && until(addrs[j]).Before(until(addrs[j-1])); j-- {
			addrs[j], addrs[j-1] = addrs[j-1], addrs[j]
		}
	}
}

func (f *fleet) bannedLocked(addr string, now time.Time) bool {
	b := f.bans[addr]
	return b != nil && now.Before(b.until)
}

// fail bans addr: 1 s after its first failure, doubling to 5 min.
func (f *fleet) fail(addr string) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.bans[addr]
	if b == nil {
		b = &ban{}
		f.bans[addr] = b
	}
	d := banMin << min(b.fails, 16)
	if d > banMax || d <= 0 {
		d = banMax
	}
	b.fails++
	b.until = f.now().Add(d)
	return d
}

// avoid keeps addr out of the candidates for d without counting a failure
// (a host that redirected us away).
func (f *fleet) avoid(addr string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.bans[addr]
	if b == nil {
		b = &ban{}
		f.bans[addr] = b
	}
	b.until = f.now().Add(d)
}

// ok clears addr's ban after a successful AUTH.
func (f *fleet) ok(addr string) {
	f.mu.Lock()
	delete(f.bans, addr)
	f.mu.Unlock()
}

// raceParams are the list's racing rules, or the defaults.
func (f *fleet) raceParams(race int, stagger time.Duration) (int, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.list != nil {
		if f.list.Race > 0 {
			race = int(f.list.Race)
		}
		if f.list.RaceStaggerMs > 0 {
			stagger = time.Duration(f.list.RaceStaggerMs) * time.Millisecond
		}
	}
	return min(max(race, 1), 3), stagger
}

// FetchNodeList gets a signed list from a gateway's GET /v1/nodes (url is
// the full URL, e.g. http://host:7101/v1/nodes), as protobuf. hc nil: a
// client with a 5 s timeout.
func FetchNodeList(ctx context.Context, hc *http.Client, url string) (*pb.SignedNodeList, error) {
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/x-protobuf")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("longlink: GET %s: %s", url, resp.Status)
	}
	var sl pb.SignedNodeList
	if err := proto.Unmarshal(b, &sl); err != nil {
		return nil, fmt.Errorf("longlink: GET %s: bad node list: %w", url, err)
	}
	return &sl, nil
}

// NodeList returns the verified list the client holds (nil: none yet) and
// whether it is stale.
func (c *Client) NodeList() (*pb.NodeList, bool) { return c.fleet.current() }

// AcceptNodeList offers a signed list (fetched by the app, e.g. with
// FetchNodeList): it is used from the next connection attempt if it
// verifies against the pins and is newer than the one held.
func (c *Client) AcceptNodeList(sl *pb.SignedNodeList) (bool, error) {
	ok, err := c.fleet.accept(sl)
	if !ok {
		return ok, err
	}
	l, _ := c.fleet.current()
	c.mu.Lock()
	if l.BackoffMinMs > 0 {
		c.opts.BackoffMin = time.Duration(l.BackoffMinMs) * time.Millisecond
	}
	if l.BackoffMaxMs > 0 {
		c.opts.BackoffMax = time.Duration(l.BackoffMaxMs) * time.Millisecond
	}
	c.mu.Unlock()
	if c.opts.OnNodeList != nil {
		c.opts.OnNodeList(l)
	}
	return ok, err
}

// ReconnectStats are the client's reconnect figures.
type ReconnectStats struct {
	Reconnects int           // AUTH_OKs after the first
	Last       time.Duration // from losing the previous connection to the last AUTH_OK
	Addr       string        // the address connected now ("" while disconnected)
}

// Reconnects returns the reconnect figures.
func (c *Client) Reconnects() ReconnectStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rstats
}

// redirectAvoid is how long a host that redirected the client away is
// left out of its candidates.
const redirectAvoid = 30 * time.Second

// errRaceLost closes a racer that authenticated after another won.
var errRaceLost = errors.New("longlink: another address won the race")

// race connects to the first of the candidates to reach AUTH_OK: up to
// Race attempts run at once, each next one started RaceStagger after the
// previous or as soon as one fails; the losers are closed and the
// addresses that failed are banned. The error is the most telling of the
// failures (a server's answer over a network error).
func (c *Client) race(preferred string) (*session, error) {
	cands := c.fleet.candidates()
	if preferred != "" {
		cands = append([]string{preferred}, slices.DeleteFunc(cands, func(a string) bool { return a == preferred })...)
	}
	n, stagger := c.fleet.raceParams(c.opts.Race, c.opts.RaceStagger)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	type res struct {
		s    *session
		addr string
		err  error
	}
	results := make(chan res, len(cands))
	started, running := 0, 0
	start := func() {
		addr := cands[started]
		started++
		running++
		go func() {
			s, err := c.connect(ctx, addr)
			if err != nil {
				err = fmt.Errorf("%s: %w", addr, err)
			}
			results <- res{s, addr, err}
		}()
	}
	start()
	t := time.NewTimer(stagger)
	defer t.Stop()
	var best error
	for running > 0 {
		select {
		case r := <-results:
			running--
			if r.err == nil {
				cancel()
				c.fleet.ok(r.s.addr)
				go func(left int) { // late finishers lose
					for range left {
						if l := <-results; l.s != nil {
							l.s.nc.Close()
						}
					}
				}(running)
				return r.s, nil
			}
			if ctx.Err() == nil {
				c.fleet.fail(r.addr)
			}
			best = moreTelling(best, r.err)
			if started < len(cands) && ctx.Err() == nil {
				start()
				t.Reset(stagger)
			}
		case <-t.C:
			if started < len(cands) && running < n {
				start()
				t.Reset(stagger)
			}
		}
	}
	if best == nil {
		best = errors.New("longlink: no address to connect to")
	}
	return nil, best
}

func moreTelling(cur, next error) error {
	var sc *ServerClose
	if cur == nil || (!errors.As(cur, &sc) && errors.As(next, &sc)) {
		return next
	}
	return cur
}

// refreshList fetches a list from NodesURL when none is held or it is
// stale, in the background and at most every 10 s.
func (c *Client) refreshList() {
	if c.opts.NodesURL == "" || len(c.fleet.pins) == 0 {
		return
	}
	if l, stale := c.fleet.current(); l != nil && !stale {
		return
	}
	if time.Since(time.Unix(0, c.lastGet.Load())) < 10*time.Second || !c.fetching.CompareAndSwap(false, true) {
		return
	}
	c.lastGet.Store(time.Now().UnixNano())
	go func() {
		defer c.fetching.Store(false)
		hc := &http.Client{Timeout: 5 * time.Second}
		if c.opts.Dialer != nil {
			hc.Transport = &http.Transport{DialContext: c.opts.Dialer}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if sl, err := FetchNodeList(ctx, hc, c.opts.NodesURL); err == nil {
			_, _ = c.AcceptNodeList(sl)
		}
	}()
}
