package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/panjf2000/gnet/v2"

	"github.com/longlink/longlink/codec"
)

// The PROXY protocol (haproxy's proxy-protocol.txt, v1 text and v2 binary)
// lets an L4 balancer in front of the gateway tell it the client's address.
// It is parsed here on the loop, from gnet's buffer, at the very start of
// the stream: github.com/pires/go-proxyproto wraps a blocking net.Conn and
// does not fit a non-blocking byte-slice loop, and the subset a gateway
// needs (the source address of a TCP stream) is small.

const (
	proxyV1Max = 107  // the whole v1 line, CRLF included (spec, section 2.1)
	proxyV2Min = 16   // signature, version/command, family, length
	proxyV2Max = 4096 // refuse larger v2 headers (TLVs) rather than buffer them
)

var (
	proxyV1Sig = []byte("PROXY ")
	proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

	errProxyMissing = errors.New("proxyproto: connection from a balancer network does not start with a PROXY header")
	errProxyV1      = errors.New("proxyproto: malformed v1 header")
	errProxyV1Long  = errors.New("proxyproto: v1 header longer than 107 bytes")
	errProxyV2      = errors.New("proxyproto: malformed v2 header")
	errProxyV2Long  = errors.New("proxyproto: v2 header longer than 4096 bytes")
)

// parseProxyHeader parses the PROXY header (v1 or v2) at the start of b.
// It returns the header's length and the client address it names; n == 0
// with a nil error means b is a strict prefix of a header: wait for more.
// src is the zero AddrPort when the header carries no usable address (v1
// UNKNOWN, v2 LOCAL such as a balancer's health check, or a v2 family other
// than TCP over IPv4/IPv6): the caller keeps the socket's peer address.
// Nothing is allocated for v2 or for v1 over IPv4.
func parseProxyHeader(b []byte) (n int, src netip.AddrPort, err error) {
	switch {
	case len(b) == 0:
		return 0, src, nil
	case b[0] == 'P':
		return parseProxyV1(b)
	case b[0] == '\r':
		return parseProxyV2(b)
	}
	return 0, src, errProxyMissing
}

// looksLikeProxy reports whether b starts like a PROXY header (or is a
// prefix of one's signature).
func looksLikeProxy(b []byte) bool {
	k := min(len(b), len(proxyV2Sig))
	if k > 0 && bytes.Equal(b[:k], proxyV2Sig[:k]) {
		return true
	}
	k = min(len(b), len(proxyV1Sig))
	return k > 0 && bytes.Equal(b[:k], proxyV1Sig[:k])
}

func parseProxyV1(b []byte) (int, netip.AddrPort, error) {
	var src netip.AddrPort
	k := min(len(b), len(proxyV1Sig))
	if !bytes.Equal(b[:k], proxyV1Sig[:k]) {
		return 0, src, errProxyV1
	}
	end := bytes.IndexByte(b[:min(len(b), proxyV1Max)], '\n')
	if end < 0 {
		if len(b) >= proxyV1Max {
			return 0, src, errProxyV1Long
		}
		if bytes.IndexByte(b, '\r') >= 0 && b[len(b)-1] != '\r' {
			return 0, src, errProxyV1 // a CR not followed by LF
		}
		return 0, src, nil
	}
	if end < 1 || b[end-1] != '\r' {
		return 0, src, errProxyV1
	}
	n := end + 1
	line := b[len(proxyV1Sig) : end-1] // "TCP4 src dst sport dport" or "UNKNOWN…"
	if bytes.IndexByte(line, '\r') >= 0 {
		return 0, src, errProxyV1
	}
	if bytes.HasPrefix(line, []byte("UNKNOWN")) && (len(line) == 7 || line[7] == ' ') {
		return n, src, nil // the rest of an UNKNOWN line is ignored (spec)
	}
	var f [5][]byte
	for i := range f {
		j := bytes.IndexByte(line, ' ')
		if i == len(f)-1 {
			j = len(line)
		} else if j < 0 {
			return 0, src, errProxyV1
		}
		f[i], line = line[:j], line[min(j+1, len(line)):]
		if len(f[i]) == 0 {
			return 0, src, errProxyV1
		}
	}
	if bytes.IndexByte(f[4], ' ') >= 0 {
		return 0, src, errProxyV1
	}
	var v6 bool
	switch string(f[0]) {
	case "TCP4":
	case "TCP6":
		v6 = true
	default:
		return 0, src, errProxyV1
	}
	sa, ok1 := parseV1Addr(f[1], v6)
	_, ok2 := parseV1Addr(f[2], v6)
	sp, ok3 := parseV1Port(f[3])
	_, ok4 := parseV1Port(f[4])
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return 0, src, errProxyV1
	}
	return n, netip.AddrPortFrom(sa.Unmap(), sp), nil
}

// parseV1Addr parses a v1 address: dotted quad for TCP4 (by hand, so it
// does not allocate), RFC 4291 text without a zone for TCP6.
func parseV1Addr(b []byte, v6 bool) (netip.Addr, bool) {
	if !v6 {
		var a [4]byte
		for i := range a {
			j := 0
			v := 0
			for j < len(b) && j < 4 && b[j] >= '0' && b[j] <= '9' {
				v = v*10 + int(b[j]-'0')
				j++
			}
			if j == 0 || j > 3 || v > 255 || (j > 1 && b[0] == '0') {
				return netip.Addr{}, false
			}
			a[i] = byte(v)
			b = b[j:]
			if i < 3 {
				if len(b) == 0 || b[0] != '.' {
					return netip.Addr{}, false
				}
				b = b[1:]
			}
		}
		return netip.AddrFrom4(a), len(b) == 0
	}
	if len(b) > 45 || bytes.IndexByte(b, ':') < 0 || bytes.IndexByte(b, '%') >= 0 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(string(b))
	return a, err == nil && a.Is6()
}

func parseV1Port(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	v := 0
	for _, ch := range b {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		v = v*10 + int(ch-'0')
	}
	return uint16(v), v <= 65535
}

func parseProxyV2(b []byte) (int, netip.AddrPort, error) {
	var src netip.AddrPort
	k := min(len(b), len(proxyV2Sig))
	if !bytes.Equal(b[:k], proxyV2Sig[:k]) {
		return 0, src, errProxyV2
	}
	if len(b) < proxyV2Min {
		if len(b) > 12 && b[12]>>4 != 2 {
			return 0, src, errProxyV2
		}
		return 0, src, nil
	}
	verCmd, fam := b[12], b[13]
	if verCmd>>4 != 2 || verCmd&0xF > 1 {
		return 0, src, errProxyV2 // version 2; command LOCAL (0) or PROXY (1)
	}
	n := proxyV2Min + int(binary.BigEndian.Uint16(b[14:16]))
	if n > proxyV2Max {
		return 0, src, errProxyV2Long
	}
	if len(b) < n {
		return 0, src, nil
	}
	body := b[proxyV2Min:n]
	if verCmd&0xF == 0 { // LOCAL: the balancer's own connection (health check)
		return n, src, nil
	}
	switch fam {
	case 0x11: // TCP over IPv4
		if len(body) < 12 {
			return 0, src, errProxyV2
		}
		return n, netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10])), nil
	case 0x21: // TCP over IPv6
		if len(body) < 36 {
			return 0, src, errProxyV2
		}
		return n, netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])).Unmap(), binary.BigEndian.Uint16(body[32:34])), nil
	case 0x00, 0x31: // UNSPEC, UNIX stream: no IP address; keep the socket's
		return n, src, nil
	}
	return 0, src, errProxyV2 // datagrams, unknown families
}

// ParseProxyNets parses --proxy-protocol-from: comma-separated CIDRs (or
// bare addresses) of the balancers allowed to send a PROXY header.
func ParseProxyNets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("proxy protocol network %q: want a CIDR such as 10.0.0.0/8: %w", f, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// sockAddr is the socket's peer address (the balancer's, when proxied).
func sockAddr(gc gnet.Conn) netip.AddrPort {
	if a, ok := gc.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// fromBalancer reports whether a new connection comes from a network
// allowed to (and so required to) send a PROXY header.
func (s *Server) fromBalancer(gc gnet.Conn) bool {
	if len(s.cfg.ProxyProtocolFrom) == 0 {
		return false
	}
	a := sockAddr(gc).Addr()
	for _, p := range s.cfg.ProxyProtocolFrom {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// proxyHeader consumes the PROXY header a balancer's connection starts
// with and records the client's address. ok false: return act (wait for
// the rest of the header, bounded by the AUTH deadline, or close).
func (s *Server) proxyHeader(c *conn, buf []byte) (act gnet.Action, ok bool) {
	n, src, err := parseProxyHeader(buf)
	if err != nil {
		s.metrics.connRefused.WithLabelValues("proxy_protocol").Inc()
		s.connLog.Warn("bad PROXY header", "conn", c.id, "balancer", sockAddr(c.gc).String(), "err", err)
		return s.closeOnLoop(c, codec.CodeProtocol), false
	}
	if n == 0 {
		return gnet.None, false
	}
	_, _ = c.gc.Discard(n)
	c.flags.And(^flagProxyHeader)
	if src.IsValid() {
		s.proxied.put(c.id, src)
	}
	return gnet.None, true
}

// refuseProxy closes a connection that sent a PROXY header from a network
// not allowed to: a client must not be able to choose its own address.
func (s *Server) refuseProxy(c *conn) gnet.Action {
	s.metrics.connRefused.WithLabelValues("proxy_protocol").Inc()
	s.connLog.Warn("PROXY header from a network not in --proxy-protocol-from", "conn", c.id, "remote", sockAddr(c.gc).String())
	return s.closeOnLoop(c, codec.CodeProtocol)
}

// peerAddr is c's client address: the one its balancer's PROXY header
// named, else the socket's peer.
func (s *Server) peerAddr(c *conn) netip.AddrPort {
	if len(s.cfg.ProxyProtocolFrom) > 0 {
		if a, ok := s.proxied.get(c.id); ok {
			return a
		}
	}
	return sockAddr(c.gc)
}

// peerTable holds the client addresses of proxied connections by conn id,
// outside conn (which must stay in its size class) and without pointers
// (the GC does not scan it): ~50 B per proxied connection, where a
// sync.Map of netip.AddrPort took ~140 B (BenchmarkProxySideMap).
type peerTable struct {
	shards [64]peerShard
}

type peerShard struct {
	mu sync.Mutex
	m  map[uint64]peerAddr
	_  [48]byte // a cache line per shard: loops store concurrently
}

// peerAddr is a netip.AddrPort without its zone handle (a pointer).
type peerAddr struct {
	ip   [16]byte
	port uint16
	is4  bool
}

func (t *peerTable) put(id uint64, a netip.AddrPort) {
	sh := &t.shards[id%uint64(len(t.shards))]
	v := peerAddr{ip: a.Addr().As16(), port: a.Port(), is4: a.Addr().Is4()}
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = map[uint64]peerAddr{}
	}
	sh.m[id] = v
	sh.mu.Unlock()
}

func (t *peerTable) get(id uint64) (netip.AddrPort, bool) {
	sh := &t.shards[id%uint64(len(t.shards))]
	sh.mu.Lock()
	v, ok := sh.m[id]
	sh.mu.Unlock()
	if !ok {
		return netip.AddrPort{}, false
	}
	a := netip.AddrFrom16(v.ip)
	if v.is4 {
		a = a.Unmap()
	}
	return netip.AddrPortFrom(a, v.port), true
}

func (t *peerTable) remove(id uint64) {
	sh := &t.shards[id%uint64(len(t.shards))]
	sh.mu.Lock()
	if _, ok := sh.m[id]; ok {
		delete(sh.m, id)
		if len(sh.m) == 0 {
			sh.m = nil // let a drained table's memory go
		}
	}
	sh.mu.Unlock()
}

// remote is peerAddr as text, for log lines.
func (s *Server) remote(c *conn) string { return s.peerAddr(c).String() }
