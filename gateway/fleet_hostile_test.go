package gateway

import (
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/proto/pb"
)

// TestFleetNodesForwardedFor: GET /v1/nodes places the caller by
// X-Forwarded-For only when the connection comes from a balancer network
// (--proxy-protocol-from); from anywhere else the header is ignored, so a
// client cannot pick another region's list by naming an address. Hostile
// header values never fail the request.
func TestFleetNodesForwardedFor(t *testing.T) {
	tab, err := fleet.ParseTable(strings.NewReader("127.0.0.0/8 north telecom\n203.0.113.0/24 south\n"))
	if err != nil {
		t.Fatal(err)
	}
	tf := startTestFleet(t, "a", "c") // north and south
	a := tf.gws["a"]
	a.cfg.Fleet.Table = tab
	addr, err := a.ServeHTTP(HTTPConfig{Addr: "127.0.0.1:0"}, false)
	if err != nil {
		t.Fatal(err)
	}
	get := func(xffs ...string) *pb.NodeList {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/nodes", nil)
		req.Header.Set("Accept", "application/x-protobuf")
		for _, x := range xffs {
			req.Header.Add("X-Forwarded-For", x)
		}
		xff := strings.Join(xffs, " | ")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("X-Forwarded-For %q: %d %s", xff, resp.StatusCode, raw)
		}
		var sl pb.SignedNodeList
		if err := proto.Unmarshal(raw, &sl); err != nil {
			t.Fatal(err)
		}
		return mustVerify(t, tf, &sl)
	}
	hostile := []string{"203.0.113.5", "1.2.3.4, 203.0.113.5", "garbage", ",,,,", strings.Repeat("203.0.113.5,", 500), "fe80::1%eth0", "::ffff:203.0.113.5", "203.0.113.5\t"}
	for _, x := range hostile {
		if nl := get(x); nl.Region != "north" {
			t.Errorf("from a non-balancer, X-Forwarded-For %.40q placed the caller in %q", x, nl.Region)
		}
	}
	// From a balancer network the last hop is the client.
	a.cfg.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	if nl := get("10.9.9.9, 203.0.113.5"); nl.Region != "south" || listHosts(nl) == "" || nl.Nodes[0].Host != "c" {
		t.Errorf("from a balancer: region %q, hosts %q", nl.Region, listHosts(nl))
	}
	if nl := get("::ffff:203.0.113.5"); nl.Region != "south" {
		t.Errorf("from a balancer, a v4-mapped client: region %q", nl.Region)
	}
	// A balancer that adds its own header line: the client's forged line
	// comes first and must not count.
	if nl := get("203.0.113.5", "127.0.0.9"); nl.Region != "north" {
		t.Errorf("a client's own X-Forwarded-For line before the balancer's placed it in %q", nl.Region)
	}
	for _, x := range hostile[2:4] { // unparsable: the balancer's own address
		if nl := get(x); nl.Region != "north" {
			t.Errorf("from a balancer, X-Forwarded-For %q: region %q", x, nl.Region)
		}
	}
}
