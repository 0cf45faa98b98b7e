package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil"
)

// TestSupervisorStatusMergesWorkers: under --workers, /status has one row
// per worker (a dead one says so), sums their connections, takes worker
// 0's switches, merges links (down in one worker: down, naming it) and
// every worker's audit lines.
func TestSupervisorStatusMergesWorkers(t *testing.T) {
	sv, servers := twoWorkerSupervisor(t)
	servers[1].AddLink(gateway.LinkCheck{Name: "probe", Addr: "x", Check: func() error { return errors.New("unplugged") }})
	servers[0].AddLink(gateway.LinkCheck{Name: "probe", Addr: "x"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", servers[1].Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := sv.handler()
	var st gateway.Status
	checkFor(t, 5*time.Second, func() error {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status?format=json", nil))
		st = gateway.Status{}
		if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
			return err
		}
		if st.Connections != 1 {
			return fmt.Errorf("connections %d", st.Connections)
		}
		return nil
	})
	if st.Workers != 2 || len(st.WorkerRows) != 2 || !st.WorkerRows[0].Up || st.WorkerRows[1].Connections != 1 {
		t.Fatalf("workers %d rows %+v", st.Workers, st.WorkerRows)
	}
	if st.Switches == nil || st.Switches.Degrade != 2 || st.Degrade != 2 {
		t.Errorf("switches %+v degrade %d", st.Switches, st.Degrade)
	}
	if l, ok := findLink(st, "probe"); !ok || l.Up || l.Err != "w1: unplugged" {
		t.Errorf("merged link %+v", l)
	}
	from := map[string]bool{}
	for _, a := range st.Audit {
		if strings.Contains(a.Line, "switches changed") {
			from[a.From] = true
		}
	}
	if !from["w0"] || !from["w1"] {
		t.Errorf("audit lines from %v, want w0 and w1", from)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	if body := rec.Body.String(); !strings.Contains(body, `id="workers"`) || strings.Count(body, "<tr><td>") < 2 {
		t.Errorf("HTML has no worker rows")
	}
	_ = servers[1].Close()
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status?format=json", nil))
	st = gateway.Status{}
	_ = json.Unmarshal(rec.Body.Bytes(), &st)
	if len(st.WorkerRows) != 2 || st.WorkerRows[1].Up || st.Workers != 1 {
		t.Errorf("after worker 1 stopped: workers %d rows %+v", st.Workers, st.WorkerRows)
	}
}

// twoWorkerSupervisor: two real gateways on admin sockets at degrade 2,
// behind a supervisor's handler (without processes).
func twoWorkerSupervisor(t *testing.T) (*supervisor, []*gateway.Server) {
	dir := t.TempDir()
	sv := &supervisor{log: slog.New(slog.NewTextHandler(io.Discard, nil)), started: time.Now()}
	var servers []*gateway.Server
	for i := range 2 {
		s := startServer(t, func(c *gateway.Config) { c.Node = fmt.Sprintf("edge-1/w%d", i) })
		sock := filepath.Join(dir, fmt.Sprintf("w%d.sock", i))
		if _, err := s.ServeAdmin("unix:" + sock); err != nil {
			t.Fatal(err)
		}
		sw := s.Switches()
		sw.Degrade = 2
		if err := s.SetSwitches(sw, "test"); err != nil {
			t.Fatal(err)
		}
		sv.workers = append(sv.workers, &workerProc{index: i, sock: sock})
		servers = append(servers, s)
	}
	return sv, servers
}

// TestSupervisorStatusPageInChromium: the supervisor's /status page, in
// headless Chromium, has the worker rows.
func TestSupervisorStatusPageInChromium(t *testing.T) {
	browser := testutil.FindChromium(t)
	sv, _ := twoWorkerSupervisor(t)
	sup := httptest.NewServer(sv.handler())
	defer sup.Close()
	if d := string(testutil.RunChromium(t, browser, sup.URL+"/status", "--dump-dom")); !strings.Contains(d, `<table id="workers">`) || !strings.Contains(d, "<td>edge-1/w1</td>") {
		t.Errorf("supervisor page has no worker rows:\n%s", d)
	}
}
