package web

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/internal/testutil/gatewaytest"
	"github.com/longlink/longlink/proto/pb"
)

// TestBrowserFleetClient: longlink.js in Chromium verifies node lists with
// WebCrypto Ed25519 (a tampered list and one signed by an unpinned key are
// refused), races the list past a dead first address to gateway B, and
// when B goes away reconnects to gateway A, reporting the reconnect time.
func TestBrowserFleetClient(t *testing.T) {
	browser := testutil.FindChromium(t)
	keys, _ := auth.NewKeySet(1, map[uint32][]byte{1: []byte("browser-test-key-0123456789abcd")})
	start := func(node string) *gateway.Server {
		return gatewaytest.Start(t, gateway.Config{Keys: keys, Loops: 1, Node: node})
	}
	a, b := start("gw-a"), start("gw-b")
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close() // refused from now on

	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	sign := func(k ed25519.PrivateKey, id uint32, l *pb.NodeList) []byte {
		lb, _ := proto.Marshal(l)
		sig := ed25519.Sign(k, append(append([]byte("longlink node list v1"), 0), lb...))
		out, _ := proto.Marshal(&pb.SignedNodeList{List: lb, KeyId: id, Signature: sig})
		return out
	}
	ws := func(addr string) string { return "ws://" + addr + "/ws" }
	l := &pb.NodeList{IssuedMs: time.Now().UnixMilli(), TtlS: 60, Race: 2, RaceStaggerMs: 100, BackoffMinMs: 50, BackoffMaxMs: 400}
	for _, ad := range []string{deadAddr, b.Addr(), a.Addr()} {
		l.Nodes = append(l.Nodes, &pb.Node{Addr: ad, WsUrl: ws(ad), Host: ad})
	}
	good := sign(priv, 3, l)
	var sl pb.SignedNodeList
	_ = proto.Unmarshal(good, &sl)
	sl.List = append([]byte(nil), sl.List...)
	sl.List[len(sl.List)-1] ^= 1
	tampered, _ := proto.Marshal(&sl)
	unpinned := sign(other, 4, l)
	pin := fmt.Sprintf("3:%s", hex.EncodeToString(priv.Public().(ed25519.PublicKey)))
	tok, _ := keys.Mint(77, "", time.Now().Add(time.Hour))

	page, stages := testPage(t, "fleettest.html")
	e := base64.StdEncoding.EncodeToString
	q := url.Values{"seed": {ws(a.Addr())}, "token": {tok}, "pin": {pin}, "list": {e(good)}, "tampered": {e(tampered)}, "unpinned": {e(unpinned)}}
	defer testutil.StartChromium(t, browser, page+"?"+q.Encode())()
	awaitStages(t, stages, "browser fleet test", func(s stage) {
		switch s.Stage {
		case "refused":
			if !strings.Contains(s.Error, "tampered: longlink 0: node list signature does not verify") || !strings.Contains(s.Error, "unpinned: longlink 0: node list signed by key 4") {
				t.Fatalf("bad lists: %s", s.Error)
			}
		case "connected":
			if s.Body != "gw-b" || s.Code != 1 {
				t.Fatalf("first connection on %q (list taken %d), want gw-b past the dead address", s.Body, s.Code)
			}
			_ = b.Close()
		case "reconnected":
			t.Logf("reconnected to %s in %d ms", s.Body, s.Code)
			if s.Body != "gw-a" || s.Code <= 0 || s.Code > 3000 {
				t.Fatalf("reconnected to %q in %d ms (via %s)", s.Body, s.Code, s.Error)
			}
		case "echo":
			if s.Body != "after failover" {
				t.Fatalf("echo %q", s.Body)
			}
		}
	})
}
