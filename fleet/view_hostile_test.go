package fleet

import (
	"strings"
	"testing"
	"time"
)

// TestViewDropsMalformedAnnouncements: an announcement whose fields would
// go into every client's node list oversized or malformed (a 100 KB
// address, a non-ws URL, a bad tag, negative load that would lift its
// weight) is dropped, so one bad or forged announcer cannot blow up every
// AUTH_OK; well-formed ones are kept.
func TestViewDropsMalformedAnnouncements(t *testing.T) {
	v := NewView(time.Minute)
	now := time.Now()
	good := Announcement{Host: "ok", Worker: "ok/w0", Addr: "bj-tel-07.example.com:7100", WS: "wss://bj-tel-07.example.com/", Region: "north", Carrier: "telecom"}
	v.Apply(good, now)
	bad := []func(a *Announcement){
		func(a *Announcement) { a.Addr = strings.Repeat("a", 100<<10) + ":7100" },
		func(a *Announcement) { a.Addr = "no-port" },
		func(a *Announcement) { a.Addr = "h:99999" },
		func(a *Announcement) { a.Addr = ":7100" },
		func(a *Announcement) { a.WS = "http://x/" },
		func(a *Announcement) { a.WS = "wss://" + strings.Repeat("a", 1000) },
		func(a *Announcement) { a.WS = "wss://x/\r\nX: 1" },
		func(a *Announcement) { a.Region = "north pole" },
		func(a *Announcement) { a.Carrier = strings.Repeat("c", 65) },
		func(a *Announcement) { a.Worker = strings.Repeat("w", 300) },
		func(a *Announcement) { a.Conns = -1000000 },
		func(a *Announcement) { a.Admission = -3 },
	}
	for i, mod := range bad {
		a := good
		a.Host, a.Worker = "bad", "bad/w0"
		mod(&a)
		v.Apply(a, now)
		if _, ok := v.Host("bad"); ok {
			t.Errorf("malformed announcement %d kept: %.80q %.80q", i, a.Addr, a.WS)
		}
	}
	if _, ok := v.Host("ok"); !ok || len(v.Hosts()) != 1 {
		t.Fatalf("view: %+v", v.Hosts())
	}
}
