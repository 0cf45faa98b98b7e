package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// NATS subjects (push/auth.go grants them per role).
const (
	SubjectState = "longlink.fleet.state" // + "." + host: Announcement (JSON), every Interval
	SubjectAdmin = "longlink.fleet.admin" // + "." + host or ".all": AdminRequest, answered by every worker
	AdminAll     = "all"
)

// Stats is what a worker reports about itself at each announcement.
type Stats struct {
	Conns, MaxConns    int
	CPU                float64
	Admission, Degrade int
	Draining           bool
	Evacuating         bool
}

// AdminRequest is an operator's request to the fleet's gateways over NATS
// (only the NATS admin role may publish on SubjectAdmin).
type AdminRequest struct {
	Op   string          `json:"op"` // "switches" (body: switch fields to merge), "policy" (body: {"scale": x}), "evacuate" (body: {"rate": n, "jitter": b}), "status"
	Body json.RawMessage `json:"body,omitempty"`
	By   string          `json:"by"` // who asks, for the audit lines
}

// AdminReply is one worker's answer.
type AdminReply struct {
	Host   string          `json:"host"`
	Worker string          `json:"worker"`
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Body   json.RawMessage `json:"body,omitempty"`
}

// Config configures a worker's part in the fleet.
type Config struct {
	Conn     *nats.Conn // authenticated as the gateway role
	Host     string     // host id (CheckTag)
	Worker   string     // this worker's node id
	Addr, WS string     // what clients dial
	Region   string
	Carrier  string
	Interval time.Duration // announcements (default 2s)
	Expiry   time.Duration // a worker silent this long is gone (default 3*Interval)
	Stats    func() Stats  // required
	// Admin, if set, answers AdminRequests for this host and for all.
	Admin   func(AdminRequest) AdminReply
	Keys    *KeyRing // signs the node lists (required)
	Lists   ListConfig
	Logger  *slog.Logger
	Metrics prometheus.Registerer // may be nil
}

// Fleet is one worker's membership: its announcements, the view, the lists.
type Fleet struct {
	cfg   Config
	view  *View
	lists *Lists
	inc   uint64
	subs  []*nats.Subscription
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	sent, recv, left prometheus.Counter
}

// Start joins the fleet: subscribes to the state subject (and the admin
// subjects), announces at once and every Interval.
func Start(cfg Config) (*Fleet, error) {
	if cfg.Conn == nil || cfg.Stats == nil || cfg.Keys == nil {
		return nil, errors.New("fleet: Config.Conn, Stats and Keys are required")
	}
	if err := checkTag(cfg.Host); err != nil {
		return nil, fmt.Errorf("fleet: host id %w", err)
	}
	for _, t := range []string{cfg.Region, cfg.Carrier} {
		if t != "" {
			if err := checkTag(t); err != nil {
				return nil, fmt.Errorf("fleet: region/carrier %w", err)
			}
		}
	}
	// Others drop a malformed announcement: say so now, not by never
	// appearing in the view.
	self := Announcement{Host: cfg.Host, Worker: cfg.Worker, Addr: cfg.Addr, WS: cfg.WS, Region: cfg.Region, Carrier: cfg.Carrier}
	if err := self.check(); err != nil {
		return nil, fmt.Errorf("fleet: this worker's announcement: %w", err)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Expiry <= 0 {
		cfg.Expiry = 3 * cfg.Interval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Lists.Self = cfg.Host
	f := &Fleet{cfg: cfg, view: NewView(cfg.Expiry), inc: uint64(time.Now().UnixNano()), stop: make(chan struct{})}
	f.lists = NewLists(cfg.Lists, f.view, cfg.Keys)
	f.initMetrics()
	f.view.OnLeave(func(h Host) {
		f.left.Inc()
		cfg.Logger.Warn("fleet: host left the view", "host", h.ID, "workers", h.Workers)
	})
	sub, err := cfg.Conn.Subscribe(SubjectState+".>", func(m *nats.Msg) {
		var a Announcement
		if json.Unmarshal(m.Data, &a) != nil || SubjectState+"."+a.Host != m.Subject {
			return // a host speaks only for itself on its own subject
		}
		f.recv.Inc()
		f.view.Apply(a, time.Now())
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: subscribe: %w", err)
	}
	f.subs = append(f.subs, sub)
	if cfg.Admin != nil {
		for _, s := range []string{SubjectAdmin + "." + cfg.Host, SubjectAdmin + "." + AdminAll} {
			sub, err := cfg.Conn.Subscribe(s, f.onAdmin)
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("fleet: subscribe: %w", err)
			}
			f.subs = append(f.subs, sub)
		}
	}
	f.announce(false)
	f.wg.Add(1)
	go f.loop()
	return f, nil
}

func (f *Fleet) initMetrics() {
	f.sent = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_fleet_announcements_sent_total", Help: "Fleet state announcements this worker published."})
	f.recv = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_fleet_announcements_received_total", Help: "Fleet state announcements heard (every host's workers, this one included)."})
	f.left = prometheus.NewCounter(prometheus.CounterOpts{Name: "longlink_fleet_hosts_left_total", Help: "Hosts that left the fleet view (silent past the expiry, or said goodbye)."})
	if f.cfg.Metrics == nil {
		return
	}
	hosts := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "longlink_fleet_hosts", Help: "Hosts in the fleet view."},
		func() float64 { return float64(len(f.view.Hosts())) })
	usable := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "longlink_fleet_hosts_listed", Help: "Hosts in the fleet view that node lists may name (not draining or evacuating)."},
		func() float64 {
			n := 0
			for _, h := range f.view.Hosts() {
				if h.Usable() {
					n++
				}
			}
			return float64(n)
		})
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "longlink_fleet_view_age_seconds", Help: "Age of the oldest live announcement in the fleet view (about the announcement interval when healthy)."},
		func() float64 { return f.view.Age(time.Now()).Seconds() })
	places := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "longlink_fleet_list_places", Help: "Places (region, carrier) with cached signed node lists."},
		func() float64 { return float64(f.lists.Places()) })
	for _, c := range []prometheus.Collector{f.sent, f.recv, f.left, hosts, usable, age, places} {
		_ = f.cfg.Metrics.Register(c)
	}
}

// View is the fleet view.
func (f *Fleet) View() *View { return f.view }

// Lists is the signed node lists.
func (f *Fleet) Lists() *Lists { return f.lists }

// Host is this worker's host id.
func (f *Fleet) Host() string { return f.cfg.Host }

// Place is this host's region and carrier.
func (f *Fleet) Place() Place { return Place{f.cfg.Region, f.cfg.Carrier} }

// AnnounceNow publishes this worker's state at once (after a change that
// should not wait for the next interval: draining, evacuating).
func (f *Fleet) AnnounceNow() { f.announce(false) }

func (f *Fleet) announce(goodbye bool) {
	st := f.cfg.Stats()
	a := Announcement{
		Host: f.cfg.Host, Worker: f.cfg.Worker, Addr: f.cfg.Addr, WS: f.cfg.WS,
		Region: f.cfg.Region, Carrier: f.cfg.Carrier,
		Conns: st.Conns, MaxConns: st.MaxConns, CPU: st.CPU, Admission: st.Admission, Degrade: st.Degrade,
		Draining: st.Draining, Evacuating: st.Evacuating, Goodbye: goodbye,
		SentMS: time.Now().UnixMilli(), Incarn: f.inc,
	}
	b, _ := json.Marshal(a)
	if err := f.cfg.Conn.Publish(SubjectState+"."+f.cfg.Host, b); err == nil {
		f.sent.Inc()
	}
	if !goodbye {
		f.view.Apply(a, time.Now()) // our own state without the round trip
	}
}

func (f *Fleet) loop() {
	defer f.wg.Done()
	ann := time.NewTicker(f.cfg.Interval)
	defer ann.Stop()
	sec := time.NewTicker(min(time.Second, f.cfg.Interval))
	defer sec.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-ann.C:
			f.announce(false)
		case now := <-sec.C:
			f.view.Expire(now)
			f.lists.Refresh(false)
		}
	}
}

func (f *Fleet) onAdmin(m *nats.Msg) {
	var q AdminRequest
	var rep AdminReply
	if err := json.Unmarshal(m.Data, &q); err != nil {
		rep = AdminReply{Error: "bad admin request: " + err.Error()}
	} else {
		rep = f.cfg.Admin(q)
	}
	rep.Host, rep.Worker = f.cfg.Host, f.cfg.Worker
	b, _ := json.Marshal(rep)
	if m.Reply != "" {
		_ = m.Respond(b)
	}
}

// Close says goodbye (so the others forget this worker at once) and stops.
func (f *Fleet) Close() {
	f.once.Do(func() {
		close(f.stop)
		f.wg.Wait()
		for _, s := range f.subs {
			_ = s.Unsubscribe()
		}
		f.announce(true)
		_ = f.cfg.Conn.Flush()
	})
}

// Watch follows the fleet view without announcing (the push router uses it
// to forget a dead host's users): every announcement on nc feeds the view,
// which expires silent workers after expiry. stop ends it.
func Watch(nc *nats.Conn, expiry time.Duration) (*View, func(), error) {
	if expiry <= 0 {
		expiry = 6 * time.Second
	}
	v := NewView(expiry)
	sub, err := nc.Subscribe(SubjectState+".>", func(m *nats.Msg) {
		var a Announcement
		if json.Unmarshal(m.Data, &a) != nil || SubjectState+"."+a.Host != m.Subject {
			return
		}
		v.Apply(a, time.Now())
	})
	if err != nil {
		return nil, nil, err
	}
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(time.Second / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				v.Expire(now)
			}
		}
	}()
	return v, func() { once.Do(func() { close(done); _ = sub.Unsubscribe() }) }, nil
}

// Ask sends an admin request to one host's workers (host) or to every
// host (AdminAll) and gathers the replies: until ctx ends, or quiet passes
// with no new reply after the first (every worker answers at once).
func Ask(ctx context.Context, nc *nats.Conn, host string, q AdminRequest, quiet time.Duration) ([]AdminReply, error) {
	if host != AdminAll {
		if err := checkTag(host); err != nil {
			return nil, fmt.Errorf("fleet: host %w", err)
		}
	}
	if quiet <= 0 {
		quiet = 500 * time.Millisecond
	}
	inbox := nc.NewRespInbox()
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	b, _ := json.Marshal(q)
	if err := nc.PublishRequest(SubjectAdmin+"."+host, inbox, b); err != nil {
		return nil, err
	}
	var out []AdminReply
	var idle <-chan time.Time
	for {
		select {
		case m := <-ch:
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" && len(out) == 0 {
				return nil, fmt.Errorf("fleet: no gateway of host %q is listening on %s.%s", host, SubjectAdmin, host)
			}
			var r AdminReply
			if json.Unmarshal(m.Data, &r) == nil {
				out = append(out, r)
			}
			idle = time.After(quiet)
		case <-idle:
			if len(out) == 0 {
				return nil, fmt.Errorf("fleet: no gateway answered on %s.%s", SubjectAdmin, host)
			}
			return out, nil
		case <-ctx.Done():
			if len(out) == 0 {
				return nil, fmt.Errorf("fleet: no gateway answered on %s.%s: %w", SubjectAdmin, host, ctx.Err())
			}
			return out, nil
		}
	}
}

// CPUSampler measures this process's CPU use between calls, as the
// fraction of the machine's cores it kept busy.
type CPUSampler struct {
	last atomic.Int64 // ns of CPU at the last sample
	at   atomic.Int64 // wall ns of the last sample
}

// Sample returns the CPU use since the previous call (0 at the first).
func (c *CPUSampler) Sample() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	cpu := ru.Utime.Nano() + ru.Stime.Nano()
	now := time.Now().UnixNano()
	prev, at := c.last.Swap(cpu), c.at.Swap(now)
	if at == 0 || now <= at {
		return 0
	}
	return min(float64(cpu-prev)/float64(now-at)/float64(runtime.NumCPU()), 1)
}
