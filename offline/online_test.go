package offline

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestOnlineCache: once the sender saw every registered device of a user
// connected, that user's notifies are not queued; a connection closing
// within the hold queues the newest skipped one (the device that left is
// notified, once); after the hold, nothing; a Left between the device
// query and Fill keeps the entry out; a new registration ends it.
func TestOnlineCache(t *testing.T) {
	on := NewOnline(time.Minute, 700*time.Millisecond)
	e := newOfflineEnv(t, func(c *SenderConfig) { c.Online = on })
	e.register(t, 9, "phone", apnsToken(9, 1))
	e.register(t, 9, "pad", apnsToken(9, 2))
	e.pres.set(9, "phone", "pad")
	e.enq.Notified(9, "", 1, 1, nil, true) // queued: nothing known yet
	waitFor(t, 5*time.Second, "both cancelled", func() bool {
		return testutil.ToFloat64(e.snd.m.cancelled.WithLabelValues("apns")) == 2
	})
	waitFor(t, 2*time.Second, "the entry", func() bool { return on.Len() == 1 })
	queued := testutil.ToFloat64(e.enq.enqueued)
	for v := uint64(2); v <= 50; v++ {
		e.enq.Notified(9, "", 1, v, nil, true)
	}
	if n := testutil.ToFloat64(e.enq.skipped); n != 49 {
		t.Fatalf("skipped %v of 49 notifies to a user whose devices are all connected", n)
	}
	if n := testutil.ToFloat64(e.enq.enqueued); n != queued {
		t.Fatalf("%v notifies queued for a user whose devices are all connected", n-queued)
	}
	// The pad leaves within the hold: the newest skipped notify is queued,
	// and the pad (only) notified of version 50, once.
	e.pres.set(9, "phone")
	e.enq.Left(9)
	waitFor(t, 5*time.Second, "the pad's notification", func() bool { return e.srv.Count(apnsToken(9, 2)) == 1 })
	time.Sleep(500 * time.Millisecond)
	reqs := e.srv.Requests()
	if len(reqs) != 1 || !strings.Contains(string(reqs[0].Body), `"v":"50"`) {
		t.Fatalf("requests after the pad left: %d %+v", len(reqs), reqs)
	}
	if on.Len() != 0 {
		t.Fatal("the entry outlived a Left")
	}
	// Queued again after the Left; the device query fills the entry again.
	e.pres.set(9, "phone", "pad")
	e.enq.Notified(9, "", 1, 51, nil, true)
	waitFor(t, 5*time.Second, "the entry again", func() bool { return on.Len() == 1 })
	e.enq.Notified(9, "", 1, 52, nil, true)
	time.Sleep(900 * time.Millisecond) // past the hold
	e.enq.Left(9)
	time.Sleep(600 * time.Millisecond)
	if n := len(e.srv.Requests()); n != 1 {
		t.Fatalf("a Left after the hold queued a skipped notify: %d requests", n)
	}
	// A Left racing the device query: no entry.
	b := on.Begin(9)
	e.enq.Left(9)
	fp, _ := e.devs.covered(9, nil)
	on.Fill(9, b, fp)
	if on.Len() != 0 {
		t.Fatal("Fill after a racing Left")
	}
	// A new registration ends the entry.
	on.Fill(9, on.Begin(9), fp)
	e.register(t, 9, "watch", apnsToken(9, 3))
	e.enq.Notified(9, "", 1, 53, nil, true)
	if on.Len() != 0 {
		t.Fatal("the entry survived a new registration")
	}
	waitFor(t, 5*time.Second, "the watch's notification", func() bool { return e.srv.Count(apnsToken(9, 3)) == 1 })
}

// TestSameNotifyTwoSubjects: a device reached by its user's queued notify
// and by a report of its connection closing with the same notify unsent
// (a device job) is notified once; a newer version is sent.
func TestSameNotifyTwoSubjects(t *testing.T) {
	e := newOfflineEnv(t, nil)
	e.register(t, 9, "pad", apnsToken(9, 2))
	e.enq.Notified(9, "", 3, 7, nil, true)
	e.enq.Notified(9, "pad", 3, 7, nil, false)
	waitFor(t, 5*time.Second, "the notification", func() bool { return e.srv.Count(apnsToken(9, 2)) >= 1 })
	time.Sleep(500 * time.Millisecond)
	if n := e.srv.Count(apnsToken(9, 2)); n != 1 {
		t.Fatalf("%d requests for one notify", n)
	}
	if n := testutil.ToFloat64(e.snd.m.dropped.WithLabelValues("duplicate")); n != 1 {
		t.Fatalf("duplicates dropped: %v", n)
	}
	e.enq.Notified(9, "pad", 3, 8, nil, false)
	waitFor(t, 5*time.Second, "the newer one", func() bool { return e.srv.Count(apnsToken(9, 2)) == 2 })
}
