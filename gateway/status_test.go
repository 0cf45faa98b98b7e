package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color/palette"
	"image/draw"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

// consoleFixture is a real gateway with push (embedded NATS), a grpc://
// logic client whose one instance does not exist, a ledger-like extra link
// that is down, switches changed (an audit line), and some traffic:
// calls, heartbeats and pushes, sampled for a few seconds.
type consoleFixture struct {
	s     *Server
	admin string
}

func startConsole(t *testing.T, sampleFor time.Duration) consoleFixture {
	t.Helper()
	s, hub, api := startPush(t, nil)
	// A logic client, as --backend grpc:// registers it: the status page reads its verdicts.
	lc, err := remote.NewClient(remote.Config{Addrs: []string{"127.0.0.1:1"}, Auth: remote.ClientAuth{Secret: "status-test-secret-0123456789"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lc.Close() })
	for _, c := range lc.Collectors() {
		if err := s.Registerer().Register(c); err != nil {
			t.Fatal(err)
		}
	}
	s.AddLink(LinkCheck{Name: "shake ledger", Addr: "/data/shake-ledger.db", Check: func() error { return errors.New("nats disconnected") }})
	addr, err := s.ServeAdmin("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sw := s.Switches()
	sw.Degrade, sw.MaxConns = 1, 50000
	if err := s.SetSwitches(sw, "status-test"); err != nil {
		t.Fatal(err)
	}
	w := dialWire(t, s.Addr())
	w.auth(token(t, 77, "", time.Hour), "phone")
	waitOnline(t, hub, 77, 1)
	end := time.Now().Add(sampleFor)
	for seq := uint16(1); time.Now().Before(end); seq++ {
		w.call(seq, "echo", []byte("x"))
		w.sendFrame(codec.CmdHeartbeat, seq, nil)
		w.expect(codec.CmdPong, 2*time.Second)
		if seq%5 == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := api.Notify(ctx, &pb.NotifyRequest{Uid: 77, Type: 3, Version: uint64(seq)})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			w.expectPush(2 * time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return consoleFixture{s: s, admin: addr}
}

func getStatus(t *testing.T, url string) Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func findLink(st Status, name string) (Link, bool) {
	for _, l := range st.Links {
		if l.Name == name {
			return l, true
		}
	}
	return Link{}, false
}

// TestStatusJSONCarriesEverything: /status?format=json has memory, CPU,
// push and heartbeat rates and their series, each link's state, the
// switches, and the audit line of the switch change.
func TestStatusJSONCarriesEverything(t *testing.T) {
	f := startConsole(t, 3500*time.Millisecond)
	var st Status
	checkFor(t, 5*time.Second, func() error { // two samples after the traffic began (a slow machine may lag)
		if st = getStatus(t, "http://"+f.admin+"/status?format=json"); len(st.Series.RSS) < 2 {
			return errors.New("fewer than two samples")
		}
		return nil
	})
	if st.RSSBytes <= 0 || st.AnonBytes <= 0 || st.AnonBytes > st.RSSBytes {
		t.Errorf("rss %v anon %v", st.RSSBytes, st.AnonBytes)
	}
	ser := st.Series
	for name, xs := range map[string][]float64{"rss": ser.RSS, "anon": ser.Anon, "cpu": ser.CPU, "push": ser.PushPerS, "heartbeats": ser.Heartbeats, "calls": ser.CallsPerS, "conns": ser.Conns} {
		if len(xs) < 2 {
			t.Errorf("series %s has %d points", name, len(xs))
		}
	}
	peak := func(xs []float64) (m float64) {
		for _, x := range xs {
			m = max(m, x)
		}
		return m
	}
	if peak(ser.Heartbeats) <= 0 || peak(ser.PushPerS) <= 0 || peak(ser.CallsPerS) <= 0 || peak(ser.CPU) <= 0 {
		t.Errorf("rates stayed 0: heartbeats %v push %v calls %v cpu %v", ser.Heartbeats, ser.PushPerS, ser.CallsPerS, ser.CPU)
	}
	if l, ok := findLink(st, "nats"); !ok || !l.Up || !strings.HasPrefix(l.Addr, "nats://127.0.0.1:") {
		t.Errorf("nats link %+v (found %v)", l, ok)
	}
	if l, ok := findLink(st, "logic"); !ok || l.Addr != "127.0.0.1:1" {
		t.Errorf("logic link %+v (found %v): want the grpc instance", l, ok)
	}
	if l, ok := findLink(st, "shake ledger"); !ok || l.Up || l.Err != "nats disconnected" {
		t.Errorf("ledger link %+v (found %v)", l, ok)
	}
	if st.Switches == nil || st.Switches.Degrade != 1 || st.Switches.MaxConns != 50000 || st.Degrade < 1 {
		t.Errorf("switches %+v degrade %d", st.Switches, st.Degrade)
	}
	found := false
	for _, a := range st.Audit {
		found = found || (strings.Contains(a.Line, "switches changed") && strings.Contains(a.Line, "by=status-test"))
	}
	if !found {
		t.Errorf("no audit line of the switch change in %+v", st.Audit)
	}
}

// TestAuditRingKeepsLastLines: only "audit:" lines are kept, with the
// logger's attributes, at most AuditKeep of them.
func TestAuditRingKeepsLastLines(t *testing.T) {
	var out bytes.Buffer
	log := WithAuditRing(slog.New(slog.NewTextHandler(&out, nil))).With("worker", 3)
	if WithAuditRing(log).Handler() != log.Handler() {
		t.Error("wrapping twice would keep every line twice")
	}
	log.Info("not an audit line")
	for i := range AuditKeep + 5 {
		log.Info("audit: ring test", "i", i)
	}
	lines := RecentAudit()
	if len(lines) != AuditKeep {
		t.Fatalf("%d lines kept, want %d", len(lines), AuditKeep)
	}
	if last := lines[len(lines)-1].Line; last != fmt.Sprintf("ring test worker=3 i=%d", AuditKeep+4) {
		t.Errorf("last line %q", last)
	}
	for _, l := range lines {
		if strings.Contains(l.Line, "not an audit") {
			t.Error("kept a line that is not an audit line")
		}
	}
	if !strings.Contains(out.String(), "not an audit line") || strings.Count(out.String(), "ring test") != AuditKeep+5 {
		t.Error("the wrapped handler did not pass every line on")
	}
}

// TestStatusConsoleInChromium loads /status of a real gateway in headless
// Chromium: the DOM it renders has every chart with its title and axis
// unit, the links table, the switches and the audit lines; a screenshot is
// taken. LONGLINK_UPDATE_SCREENSHOT=1 keeps it in docs/img/status.png.
func TestStatusConsoleInChromium(t *testing.T) {
	browser := testutil.FindChromium(t)
	f := startConsole(t, 6*time.Second)
	url := "http://" + f.admin + "/status"
	dom := string(testutil.RunChromium(t, browser, url, "--dump-dom"))
	for _, want := range []string{
		`Connections <tspan class="unit">(count)</tspan>`,
		`Calls <tspan class="unit">(calls/s)</tspan>`,
		`Push deliveries <tspan class="unit">(pushes/s)</tspan>`,
		`Heartbeats <tspan class="unit">(heartbeats/s)</tspan>`,
		`Queueing time <tspan class="unit">(ms)</tspan>`,
		`Shed calls <tspan class="unit">(calls/s)</tspan>`,
		`Memory <tspan class="unit">(MiB)</tspan>`,
		`CPU <tspan class="unit">(% of one core)</tspan>`,
		`class="xt"`, `>now</text>`, `>−5m</text>`, `class="yt"`, // both axes, tick labels
		`<table id="links">`, `<td>nats</td>`, `<td class="up">up</td>`,
		`<td>shake ledger</td><td>/data/shake-ledger.db</td><td class="down">down: nats disconnected</td>`,
		`<td>logic</td><td>127.0.0.1:1</td>`,
		`<table id="switches">`, `<td>degrade</td><td>1</td>`, `<td>max_conns</td><td>50000</td>`,
		`<table id="audit">`, `switches changed by=status-test`,
		`degrade level 1`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %s", want)
		}
	}
	if n := strings.Count(dom, "<polyline"); n < 8 {
		t.Errorf("%d curves drawn, want at least 8 (one per chart, two for memory)", n)
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	shot := filepath.Join(t.TempDir(), "status.png")
	testutil.RunChromium(t, browser, url, "--screenshot="+shot)
	raw, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1400 || b.Dy() != 1800 {
		t.Errorf("screenshot %v, want 1400x1800", b)
	}
	if os.Getenv("LONGLINK_UPDATE_SCREENSHOT") != "" {
		if err := os.WriteFile("../docs/img/status.png", smallPNG(t, img), 0o644); err != nil {
			t.Fatal(err)
		}
	}

}

// smallPNG re-encodes a screenshot with 256 colours: a page of flat colours
// loses nothing visible and the file shrinks severalfold.
func smallPNG(t *testing.T, img image.Image) []byte {
	p := image.NewPaletted(img.Bounds(), palette.Plan9)
	draw.Draw(p, p.Rect, img, img.Bounds().Min, draw.Src)
	var b bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&b, p); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// BenchmarkStatusSample is the once-a-second cost /status adds to a worker.
func BenchmarkStatusSample(b *testing.B) {
	s := startServer(b, nil)
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s.sampleStatus(now.Add(time.Duration(i) * time.Second))
	}
}
