package fleet_test

import (
	"bufio"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/proto/pb"
)

// docVector reads the node list test vector of docs/protocol.md: the
// fenced block after "<!-- node list test vector -->", "label value" lines
// whose values continue on indented lines.
func docVector(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v := map[string]string{}
	state, label := 0, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case state == 0 && strings.TrimSpace(line) == "<!-- node list test vector -->":
			state = 1
		case state == 1 && strings.HasPrefix(line, "```"):
			state = 2
		case state == 2 && strings.HasPrefix(line, "```"):
			return v
		case state == 2 && strings.HasPrefix(line, " "):
			v[label] += strings.TrimSpace(line)
		case state == 2:
			var val string
			label, val, _ = strings.Cut(line, " ")
			v[label] = strings.TrimSpace(val)
		}
	}
	t.Fatal("docs/protocol.md: no node list test vector block")
	return nil
}

func unhex(t *testing.T, v map[string]string, k string) []byte {
	t.Helper()
	b, err := hex.DecodeString(v[k])
	if err != nil || len(b) == 0 {
		t.Fatalf("docs/protocol.md vector %q: %v", k, err)
	}
	return b
}

// TestNodeListVectorInDocs: the node list test vector an independent
// client is told to check against is what this code produces and accepts.
func TestNodeListVectorInDocs(t *testing.T) {
	v := docVector(t)
	priv := ed25519.NewKeyFromSeed(unhex(t, v, "seed"))
	kr, err := fleet.NewKeyRing([]fleet.SigningKey{{ID: 7, Private: priv}}, 7)
	if err != nil {
		t.Fatal(err)
	}
	if got := kr.Pins()[0].String(); got != v["pin"] {
		t.Errorf("pin: docs %s, code %s", v["pin"], got)
	}
	want := &pb.NodeList{Nodes: []*pb.Node{
		{Addr: "198.51.100.7:7100", Host: "bj-tel-07", Weight: 800, Region: "north", Carrier: "telecom"},
		{Addr: "198.51.100.8:7100", WsUrl: "wss://bj-tel-08.example.com/", Host: "bj-tel-08", Weight: 350, Region: "north"},
	}, TtlS: 300, BackoffMinMs: 1000, BackoffMaxMs: 300000, IssuedMs: 1767225600000, Region: "north", Carrier: "telecom", Race: 2, RaceStaggerMs: 250}
	list, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(list); got != v["list"] {
		t.Errorf("list: docs %s\ncode %s", v["list"], got)
	}
	sl := kr.Sign(unhex(t, v, "list"))
	if got := hex.EncodeToString(sl.Signature); got != v["signature"] {
		t.Errorf("signature: docs %s\ncode %s", v["signature"], got)
	}
	raw, _ := proto.Marshal(sl)
	if got := hex.EncodeToString(raw); got != v["signed"] {
		t.Errorf("signed: docs %s\ncode %s", v["signed"], got)
	}

	// A client holding only the doc's pin and bytes verifies it.
	pin, err := fleet.ParsePin(v["pin"])
	if err != nil {
		t.Fatal(err)
	}
	var got pb.SignedNodeList
	if err := proto.Unmarshal(unhex(t, v, "signed"), &got); err != nil {
		t.Fatal(err)
	}
	nl, err := fleet.Verify(&got, []fleet.Pin{pin})
	if err != nil || !proto.Equal(nl, want) {
		t.Fatalf("verify the doc's list: %v %v", nl, err)
	}
	if !ed25519.Verify(pin.Public, append([]byte("longlink node list v1\x00"), got.List...), got.Signature) {
		t.Error("the signature is not plain Ed25519 over the documented message")
	}
	bad := proto.Clone(&got).(*pb.SignedNodeList)
	bad.List[len(bad.List)-1] ^= 1
	if _, err := fleet.Verify(bad, []fleet.Pin{pin}); !errors.Is(err, fleet.ErrBadSignature) {
		t.Errorf("a flipped bit: %v", err)
	}
	if _, err := fleet.Verify(&got, []fleet.Pin{{ID: 8, Public: pin.Public}}); !errors.Is(err, fleet.ErrUnknownKey) {
		t.Errorf("an unpinned key id: %v", err)
	}
}
