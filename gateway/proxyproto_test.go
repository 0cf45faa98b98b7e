package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
)

// encodeProxyV1 is the header haproxy's send-proxy writes.
func encodeProxyV1(src, dst netip.AddrPort) []byte {
	fam := "TCP4"
	if src.Addr().Is6() {
		fam = "TCP6"
	}
	return fmt.Appendf(nil, "PROXY %s %s %s %d %d\r\n", fam, src.Addr(), dst.Addr(), src.Port(), dst.Port())
}

// encodeProxyV2 is the header send-proxy-v2 writes (PROXY command, TCP),
// with tlv appended as the TLV block.
func encodeProxyV2(src, dst netip.AddrPort, tlv []byte) []byte {
	b := append([]byte(nil), proxyV2Sig...)
	var addrs []byte
	fam := byte(0x11)
	if src.Addr().Is4() {
		a, d := src.Addr().As4(), dst.Addr().As4()
		addrs = append(append(addrs, a[:]...), d[:]...)
	} else {
		fam = 0x21
		a, d := src.Addr().As16(), dst.Addr().As16()
		addrs = append(append(addrs, a[:]...), d[:]...)
	}
	addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
	addrs = binary.BigEndian.AppendUint16(addrs, dst.Port())
	addrs = append(addrs, tlv...)
	b = append(b, 0x21, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)))
	return append(b, addrs...)
}

var proxyLocalV2 = append(append([]byte(nil), proxyV2Sig...), 0x20, 0x00, 0, 0)

func TestProxyHeaderParse(t *testing.T) {
	src4, dst4 := netip.MustParseAddrPort("203.0.113.7:51234"), netip.MustParseAddrPort("10.0.0.1:7100")
	src6, dst6 := netip.MustParseAddrPort("[2001:db8::1]:443"), netip.MustParseAddrPort("[2001:db8::2]:7100")
	ok := []struct {
		name string
		in   []byte
		src  netip.AddrPort // zero: no address (keep the socket's)
	}{
		{"v1 tcp4", encodeProxyV1(src4, dst4), src4},
		{"v1 tcp6", encodeProxyV1(src6, dst6), src6},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), netip.AddrPort{}},
		{"v1 unknown junk", []byte("PROXY UNKNOWN ff 1 2\r\n"), netip.AddrPort{}},
		{"v1 max length", []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"), netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")},
		{"v2 tcp4", encodeProxyV2(src4, dst4, nil), src4},
		{"v2 tcp6", encodeProxyV2(src6, dst6, nil), src6},
		{"v2 tlvs", encodeProxyV2(src4, dst4, []byte{0x03, 0, 4, 1, 2, 3, 4}), src4},
		{"v2 local", proxyLocalV2, netip.AddrPort{}},
	}
	for _, tc := range ok {
		in := append(append([]byte(nil), tc.in...), 0xD7, 1, 2) // a frame follows
		n, src, err := parseProxyHeader(in)
		if err != nil || n != len(tc.in) || src != tc.src {
			t.Errorf("%s: n=%d src=%v err=%v, want n=%d src=%v", tc.name, n, src, err, len(tc.in), tc.src)
		}
		for k := range len(tc.in) { // every strict prefix waits
			if n, _, err := parseProxyHeader(tc.in[:k]); n != 0 || err != nil {
				t.Errorf("%s: prefix of %d bytes: n=%d err=%v, want wait", tc.name, k, n, err)
			}
		}
	}
	longest := []byte("PROXY UNKNOWN " + strings.Repeat("x", proxyV1Max-16) + "\r\n")
	if n, _, err := parseProxyHeader(longest); n != proxyV1Max || err != nil {
		t.Errorf("a v1 line of %d bytes: n=%d err=%v", len(longest), n, err)
	}
	longer := append([]byte("PROXY UNKNOWN x"), longest[14:]...)
	if n, _, err := parseProxyHeader(longer); err == nil {
		t.Errorf("a v1 line of %d bytes accepted (n=%d)", len(longer), n)
	}
	bad := map[string][]byte{
		"not proxy":      {0xD7, 1, 0, 1},
		"http":           []byte("GET / HTTP/1.1\r\n"),
		"v1 lf only":     []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
		"v1 cr alone":    []byte("PROXY TCP4 1.2.3.4\r5.6.7.8 1 2"),
		"v1 fam":         []byte("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
		"v1 v6 in tcp4":  []byte("PROXY TCP4 ::1 ::1 1 2\r\n"),
		"v1 v4 in tcp6":  []byte("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"),
		"v1 octet":       []byte("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"),
		"v1 lead zero":   []byte("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"),
		"v1 port":        []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
		"v1 fields":      []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
		"v1 extra":       []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
		"v1 two spaces":  []byte("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"),
		"v1 zone":        []byte("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
		"v1 too long":    []byte("PROXY UNKNOWN " + strings.Repeat("x", 100)),
		"v1 bad sig":     []byte("PROXX TCP4"),
		"v2 version":     append(append([]byte(nil), proxyV2Sig...), 0x11, 0x11, 0, 12),
		"v2 command":     append(append([]byte(nil), proxyV2Sig...), 0x22, 0x11, 0, 12),
		"v2 short addrs": append(append([]byte(nil), proxyV2Sig...), 0x21, 0x11, 0, 4, 1, 2, 3, 4),
		"v2 udp":         append(append([]byte(nil), proxyV2Sig...), 0x21, 0x12, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2),
		"v2 too long":    append(append([]byte(nil), proxyV2Sig...), 0x21, 0x11, 0x10, 0x00),
		"v2 bad sig":     []byte("\r\n\r\n\x00\r\nQUIX\n"),
	}
	for name, in := range bad {
		if n, src, err := parseProxyHeader(in); err == nil {
			t.Errorf("%s: accepted (n=%d src=%v)", name, n, src)
		}
	}
}

func TestProxyHeaderNoAlloc(t *testing.T) {
	src4, dst4 := netip.MustParseAddrPort("203.0.113.7:51234"), netip.MustParseAddrPort("10.0.0.1:7100")
	for name, in := range map[string][]byte{
		"v1 tcp4": encodeProxyV1(src4, dst4),
		"v2 tcp4": encodeProxyV2(src4, dst4, nil),
		"v2 tcp6": encodeProxyV2(netip.MustParseAddrPort("[2001:db8::1]:443"), netip.MustParseAddrPort("[2001:db8::2]:7100"), nil),
	} {
		if a := testing.AllocsPerRun(100, func() { _, _, _ = parseProxyHeader(in) }); a != 0 {
			t.Errorf("%s: %v allocs per parse, want 0", name, a)
		}
	}
}

func TestParseProxyNets(t *testing.T) {
	ps, err := ParseProxyNets(" 10.0.0.0/8, 192.168.1.7 ,2001:db8::/32,")
	if err != nil || len(ps) != 3 || ps[1].String() != "192.168.1.7/32" {
		t.Fatalf("got %v %v", ps, err)
	}
	if _, err := ParseProxyNets("10.0.0.0/8,nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("bad network: err %v", err)
	}
}

// FuzzProxyHeader: random input never panics, an accepted header ends
// where its own framing says (v1 at its first CRLF within 107 bytes, v2 at
// 16 + its declared length), and what follows it never changes the result;
// encoded headers round-trip.
func FuzzProxyHeader(f *testing.F) {
	src4, dst4 := netip.MustParseAddrPort("203.0.113.7:51234"), netip.MustParseAddrPort("10.0.0.1:7100")
	f.Add(encodeProxyV1(src4, dst4), []byte{})
	f.Add(encodeProxyV2(src4, dst4, []byte{1, 0, 2, 'h', '2'}), []byte{0xD7})
	f.Add(proxyLocalV2, []byte("GET"))
	f.Add([]byte("PROXY UNKNOWN\r\n"), []byte{})
	f.Fuzz(func(t *testing.T, in, tail []byte) {
		n, src, err := parseProxyHeader(in)
		if err != nil {
			if n != 0 || src.IsValid() {
				t.Fatalf("error %v with n=%d src=%v", err, n, src)
			}
			return
		}
		if n > len(in) {
			t.Fatalf("consumed %d of %d bytes", n, len(in))
		}
		if n == 0 {
			if len(in) > proxyV2Max {
				t.Fatalf("waits with %d bytes buffered", len(in))
			}
			return
		}
		switch in[0] {
		case 'P':
			if n > proxyV1Max || !bytes.HasSuffix(in[:n], []byte("\r\n")) || bytes.IndexByte(in[:n-1], '\n') >= 0 {
				t.Fatalf("v1 header of %d bytes does not end at its first CRLF: %q", n, in[:n])
			}
		case '\r':
			if want := proxyV2Min + int(binary.BigEndian.Uint16(in[14:16])); n != want {
				t.Fatalf("v2 header took %d bytes, declares %d", n, want)
			}
		default:
			t.Fatalf("accepted a header starting with %#x", in[0])
		}
		more := append(append([]byte(nil), in...), tail...)
		if n2, src2, err2 := parseProxyHeader(more); n2 != n || src2 != src || err2 != nil {
			t.Fatalf("trailing bytes changed the result: %d %v %v -> %d %v %v", n, src, err, n2, src2, err2)
		}
		if !src.IsValid() {
			return
		}
		// Round trip: the address re-encoded parses back to itself.
		dst := netip.AddrPortFrom(src.Addr(), 7100)
		for _, enc := range [][]byte{encodeProxyV1(src, dst), encodeProxyV2(src, dst, tail[:min(len(tail), 64)])} {
			if n3, src3, err3 := parseProxyHeader(enc); n3 != len(enc) || src3 != src || err3 != nil {
				t.Fatalf("round trip of %v via %q: %d %v %v", src, enc, n3, src3, err3)
			}
		}
	})
}

func BenchmarkProxyHeader(b *testing.B) {
	src, dst := netip.MustParseAddrPort("203.0.113.7:51234"), netip.MustParseAddrPort("10.0.0.1:7100")
	for name, in := range map[string][]byte{"v1": encodeProxyV1(src, dst), "v2": encodeProxyV2(src, dst, nil)} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if n, _, err := parseProxyHeader(in); n != len(in) || err != nil {
					b.Fatal(n, err)
				}
			}
		})
	}
}

// BenchmarkProxySideMap reports what the side map costs per proxied
// connection (conn itself does not grow).
func BenchmarkProxySideMap(b *testing.B) {
	const conns = 100_000
	cs := make([]conn, conns)
	for i := range cs {
		cs[i].id = uint64(i + 1)
	}
	var s Server
	var m0, m1 runtime.MemStats
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&m0)
		for i := range cs {
			s.proxied.put(cs[i].id, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), uint16(i)))
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/conns, "B/conn")
		for i := range cs {
			s.proxied.remove(cs[i].id)
		}
	}
}
