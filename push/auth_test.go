package push_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/shake/opening"
)

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// violations collects a connection's asynchronous errors (permission
// violations arrive that way).
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	v.errs = append(v.errs, err.Error())
	v.mu.Unlock()
}

func (v *violations) saw(sub string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, sub) {
			return true
		}
	}
	return false
}

func authHub(t *testing.T) (*push.Hub, push.Secret) {
	t.Helper()
	return authHubAt(t, filepath.Join(t.TempDir(), "js"), nil)
}

// authHubAt runs a hub with JetStream in jsDir and a fresh host secret;
// logs go to logs (nil: nowhere).
func authHubAt(t *testing.T, jsDir string, logs *logCapture) (*push.Hub, push.Secret) {
	t.Helper()
	sec, created, err := push.LoadOrCreateSecret(filepath.Join(t.TempDir(), push.SecretFile))
	if err != nil || !created {
		t.Fatal(created, err)
	}
	log := quiet
	if logs != nil {
		log = slog.New(logs)
	}
	h, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", Secret: sec, JetStreamDir: jsDir, Logger: log, ProbeEvery: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, sec
}

// logCapture is a slog.Handler keeping every record's message and attributes.
type logCapture struct {
	mu    sync.Mutex
	lines []string
	attrs []slog.Attr
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	l.mu.Lock()
	for _, a := range l.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	l.mu.Unlock()
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	l.mu.Lock()
	defer l.mu.Unlock()
	return &logChild{l, append(append([]slog.Attr(nil), l.attrs...), as...)}
}
func (l *logCapture) WithGroup(string) slog.Handler { return l }

func (l *logCapture) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.lines {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

// logChild is logCapture with attributes added (slog.Logger.With).
type logChild struct {
	root  *logCapture
	attrs []slog.Attr
}

func (c *logChild) Enabled(context.Context, slog.Level) bool { return true }
func (c *logChild) Handle(ctx context.Context, r slog.Record) error {
	r2 := r.Clone()
	r2.AddAttrs(c.attrs...)
	return c.root.Handle(ctx, r2)
}
func (c *logChild) WithAttrs(as []slog.Attr) slog.Handler {
	return &logChild{c.root, append(append([]slog.Attr(nil), c.attrs...), as...)}
}
func (c *logChild) WithGroup(string) slog.Handler { return c }

func connectAs(t *testing.T, h *push.Hub, sec push.Secret, r push.Role, v *violations) *nats.Conn {
	t.Helper()
	opts := []nats.Option{push.ClientAuth{Secret: sec}.As(r), nats.Timeout(5 * time.Second)}
	if v != nil {
		opts = append(opts, nats.ErrorHandler(v.handler))
	}
	nc, err := nats.Connect(h.NATSURL(), opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", r, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestNATSRefusesUnauthenticated: no credentials, a wrong password, or
// another role's user with a guessed password cannot connect, so nobody
// without the host secret can publish pushes or claims.
func TestNATSRefusesUnauthenticated(t *testing.T) {
	h, sec := authHub(t)
	for name, opts := range map[string][]nats.Option{
		"none":           nil,
		"wrong password": {nats.UserInfo("gateway", "guess")},
		"other secret":   {push.ClientAuth{Secret: push.Secret("0123456789abcdef0123456789abcdef")}.As(push.RoleAdmin)},
	} {
		nc, err := nats.Connect(h.NATSURL(), append(opts, nats.Timeout(5*time.Second))...)
		if err == nil {
			// On an open server this publish would be accepted: a forged push and a forged claim.
			_ = nc.Publish(push.SubjectNotify, []byte("forged"))
			_ = nc.Publish("shake.opened.1.1", []byte("forged"))
			nc.Close()
			t.Errorf("%s: connected without valid credentials", name)
			continue
		}
		if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: want an authorization error, got %v", name, err)
		}
	}
	// The right secret connects.
	connectAs(t, h, sec, push.RolePusher, nil)
}

// TestNATSRolePermissions: each role can do its own work (the real
// opening.EnsureStream, claim publish and read-back, the ledger's durable
// consumer) and nothing of another's; nobody but admin can purge the claim
// stream or delete its consumer.
func TestNATSRolePermissions(t *testing.T) {
	h, sec := authHub(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The gateway (an in-process opener) creates the stream and claims a packet.
	gv := &violations{}
	gw := connectAs(t, h, sec, push.RoleGateway, gv)
	gjs, _ := jetstream.New(gw)
	st, err := opening.EnsureStream(ctx, gjs, 1, 0, slog.Default())
	if err != nil {
		t.Fatalf("gateway EnsureStream: %v", err)
	}
	subj := opening.Subject(7, 1)
	if _, err := gjs.Publish(ctx, subj, []byte("claim"), jetstream.WithExpectLastSequencePerSubject(0)); err != nil {
		t.Fatalf("gateway claim: %v", err)
	}
	if _, err := st.GetLastMsgForSubject(ctx, subj); err != nil {
		t.Fatalf("gateway reads the claim back: %v", err)
	}

	// The ledger consumes its durable and acknowledges.
	lv := &violations{}
	lc := connectAs(t, h, sec, push.RoleLedger, lv)
	ljs, _ := jetstream.New(lc)
	if _, err := opening.EnsureStream(ctx, ljs, 1, 0, slog.Default()); err != nil { // the gateway's ledger does this at start
		t.Fatalf("ledger EnsureStream: %v", err)
	}
	cons, err := opening.Consumer(ctx, ljs, time.Second)
	if err != nil {
		t.Fatalf("ledger consumer: %v", err)
	}

	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 700*time.Millisecond) }

	// The gateway may not consume the ledger's durable (nor make its own).
	c0, cc0 := short()
	defer cc0()
	if gc, err := gjs.Consumer(c0, opening.StreamName, opening.LedgerDurable); err == nil {
		if mb, err := gc.Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond)); err == nil {
			for range mb.Messages() {
				t.Error("gateway fetched a message from the ledger's durable consumer")
			}
		}
	}
	c1, cc1 := short()
	if _, err := gjs.CreateOrUpdateConsumer(c1, opening.StreamName, jetstream.ConsumerConfig{Durable: "thief"}); err == nil {
		t.Error("gateway created a consumer on the claim stream")
	}
	cc1()
	// Nobody but admin purges or deletes.
	for _, nc := range []*nats.Conn{gw, lc} {
		js, _ := jetstream.New(nc)
		c, cc := short()
		if err := js.DeleteConsumer(c, opening.StreamName, opening.LedgerDurable); err == nil {
			t.Error("a non-admin deleted the ledger consumer")
		}
		cc()
		c, cc = short()
		s, err := js.Stream(c, opening.StreamName)
		if err == nil {
			if err := s.Purge(c); err == nil {
				t.Error("a non-admin purged the claim stream")
			}
		}
		cc()
		c, cc = short()
		if err := js.DeleteStream(c, opening.StreamName); err == nil {
			t.Error("a non-admin deleted the claim stream")
		}
		cc()
	}
	// The ledger may not publish claims; a pusher neither, nor presence.
	c, cc := short()
	if _, err := ljs.Publish(c, opening.Subject(7, 2), []byte("forged")); err == nil {
		t.Error("the ledger published a claim")
	}
	cc()
	pv := &violations{}
	pc := connectAs(t, h, sec, push.RolePusher, pv)
	_ = pc.Publish(opening.Subject(7, 3), []byte("forged"))
	_ = pc.Publish(push.SubjectPresence, []byte("forged"))
	_ = pc.Publish(push.NodeSubject("n1"), []byte("forged"))
	// A pusher's request is answered by the router (the gateway role may
	// answer requests it receives), and a gateway's request to the opener
	// service by an opener.
	if m, err := pc.Request(push.SubjectNotify, mustMarshal(t, &pb.NotifyRequest{Uid: 1, Type: 1, Version: 1}), 5*time.Second); err != nil {
		t.Errorf("pusher notify request: %v", err)
	} else {
		var rep pb.PushReply
		if err := proto.Unmarshal(m.Data, &rep); err != nil || rep.Offline != 1 {
			t.Errorf("pusher notify reply %v %v", &rep, err)
		}
	}
	oc := connectAs(t, h, sec, push.RoleOpener, nil)
	if _, err := oc.QueueSubscribe(opening.ServiceSubj, opening.ServiceQueue, func(m *nats.Msg) { _ = m.Respond([]byte("ok")) }); err != nil {
		t.Fatal(err)
	}
	_ = oc.FlushTimeout(2 * time.Second)
	if m, err := gw.Request(opening.ServiceSubj, []byte("open"), 5*time.Second); err != nil || string(m.Data) != "ok" {
		t.Errorf("gateway → opener service: %v", err)
	}
	_ = pc.FlushTimeout(2 * time.Second)
	// A worker (internet-facing) may not push to other nodes' users, nor
	// inject API calls the router would act on.
	_ = gw.Publish(push.NodeSubject("n1"), []byte("forged"))
	_ = gw.Publish(push.SubjectAll, []byte("forged"))
	_ = gw.Publish(push.SubjectNotify, []byte("forged"))
	_ = gw.FlushTimeout(2 * time.Second)

	// The claim stream still holds exactly the one real claim, and the
	// ledger gets it.
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("claim stream holds %d messages, want 1", info.State.Msgs)
	}
	mb, err := cons.Fetch(10, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range mb.Messages() {
		n++
		if err := m.Ack(); err != nil {
			t.Errorf("ledger ack: %v", err)
		}
	}
	if n != 1 {
		t.Errorf("ledger fetched %d claims, want 1", n)
	}
	time.Sleep(100 * time.Millisecond)
	for _, c := range []struct {
		sub string
		v   *violations
	}{{"$JS.API.STREAM.PURGE", gv}, {"$JS.API.CONSUMER.DELETE", lv}, {"shake.opened", pv}, {push.SubjectPresence, pv},
		{push.NodeSubject("n1"), gv}, {push.SubjectAll, gv}, {push.SubjectNotify, gv}} {
		if !c.v.saw(c.sub) {
			t.Errorf("no permissions violation reported for %s", c.sub)
		}
	}

	// Admin can (the operator's escape hatch).
	ajs, _ := jetstream.New(connectAs(t, h, sec, push.RoleAdmin, nil))
	if err := ajs.DeleteConsumer(ctx, opening.StreamName, opening.LedgerDurable); err != nil {
		t.Errorf("admin delete consumer: %v", err)
	}
}

func TestSecretFilePermissions(t *testing.T) {
	p := filepath.Join(t.TempDir(), push.SecretFile)
	s1, created, err := push.LoadOrCreateSecret(p)
	if err != nil || !created {
		t.Fatal(created, err)
	}
	s2, created, err := push.LoadOrCreateSecret(p)
	if err != nil || created || s1.Password(push.RoleGateway) != s2.Password(push.RoleGateway) {
		t.Fatal("reload differs", created, err)
	}
	if s1.Password(push.RoleGateway) == s1.Password(push.RoleLedger) {
		t.Fatal("roles share a password")
	}
	if err := chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := push.LoadSecret(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("a world-readable secret was accepted: %v", err)
	}
	if _, err := push.LoadSecret(p + ".missing"); !errors.Is(err, errNotExist) {
		t.Fatalf("missing secret: %v", err)
	}
}

var errNotExist = os.ErrNotExist

func chmod(p string, m os.FileMode) error { return os.Chmod(p, m) }
