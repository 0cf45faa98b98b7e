// Package chaos_test kills the shake pipeline's components with SIGKILL at
// random moments (every role at least once per run) and at deterministic
// crash points (the ledger between commit and ack, the opener between
// publish and reply) while clients shake and open, then checks per packet
// that every acknowledged (packet, user, amount) was credited exactly once
// and that `shake reconcile`, users included, is clean. The same checker
// must fail on two planted mutants (TestChaosCheckerCatchesPlantedMutants). Each component is a separate process: this test binary
// re-executed with LONGLINK_CHAOS_ROLE set (nats, opener, ledger, gateway).
package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/client"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/shake"
	"github.com/longlink/longlink/shake/opening"
	"github.com/longlink/longlink/shake/shaketest"
)

// roleCfg is passed to a child process as JSON in LONGLINK_CHAOS_CFG.
type roleCfg struct {
	Root      string    `json:"root"` // shaketest event root
	NATS      string    `json:"nats"` // host:port
	Gateway   string    `json:"gateway"`
	SlotStart time.Time `json:"slot_start"`
	TokenKey  []byte    `json:"token_key"`
	Fault     string    `json:"fault"` // crash points or a planted mutant (faultFor)
}

// Faults a run can plant in its children.
const (
	// faultCrashPoints: deterministic crash points. The ledger kills
	// itself (SIGKILL) after every 2nd commit before acknowledging it; the
	// opener after every 10th publish before answering.
	faultCrashPoints = "crash-points"
	// Planted mutants, which the checker must catch:
	faultLedgerAckFirst    = "mutant-ledger-ack-first"    // the 2nd batch acknowledged, then SIGKILL before its commit
	faultOpenerAnswerFirst = "mutant-opener-answer-first" // every 4th OPEN answered OK without the claim being durable
)

func suicide() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// faultFor returns the hook for role under fault (nil: none).
func faultFor(role, fault string) func(string) opening.FaultAction {
	var n atomic.Int64
	switch {
	case fault == faultCrashPoints && role == "ledger":
		return func(p string) opening.FaultAction {
			if p == opening.PointAfterCommit && n.Add(1)%2 == 0 {
				suicide()
			}
			return opening.FaultNone
		}
	case fault == faultCrashPoints && role == "opener":
		return func(p string) opening.FaultAction {
			if p == opening.PointAfterPublish && n.Add(1)%10 == 0 {
				suicide()
			}
			return opening.FaultNone
		}
	case fault == faultLedgerAckFirst && role == "ledger":
		return func(p string) opening.FaultAction {
			if p == opening.PointBeforeCommit && n.Add(1) == 2 {
				return opening.FaultAckFirst
			}
			return opening.FaultNone
		}
	case fault == faultOpenerAnswerFirst && role == "opener":
		return func(p string) opening.FaultAction {
			if p == opening.PointBeforePublish && n.Add(1)%4 == 0 {
				return opening.FaultAnswerFirst
			}
			return opening.FaultNone
		}
	}
	return nil
}

func TestMain(m *testing.M) {
	if role := os.Getenv("LONGLINK_CHAOS_ROLE"); role != "" {
		var cfg roleCfg
		if err := json.Unmarshal([]byte(os.Getenv("LONGLINK_CHAOS_CFG")), &cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		if err := runRole(role, cfg); err != nil {
			fmt.Fprintln(os.Stderr, role+":", err)
			os.Exit(1)
		}
		select {} // until killed
	}
	os.Exit(m.Run())
}

func (c roleCfg) event() (*shake.Plan, *shake.KeyStore, *shake.SealKeys, error) {
	plan, err := shake.LoadPlan(filepath.Join(c.Root, "event"))
	if err != nil {
		return nil, nil, nil, err
	}
	ks, err := shake.LoadKeyStore(filepath.Join(c.Root, "keys"))
	if err != nil {
		return nil, nil, nil, err
	}
	sks, err := shake.LoadKeyStore(filepath.Join(c.Root, "sealkeys"))
	if err != nil {
		return nil, nil, nil, err
	}
	seal, err := shake.NewSealKeys(sks)
	return plan, ks, seal, err
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func runRole(role string, c roleCfg) error {
	url := "nats://" + c.NATS
	switch role {
	case "nats":
		_, err := push.StartEmbedded(push.EmbeddedConfig{Listen: c.NATS, JetStreamDir: filepath.Join(c.Root, "js")})
		return err
	case "opener":
		plan, ks, seal, err := c.event()
		if err != nil {
			return err
		}
		nc, err := push.Connect(url, "chaos-opener", quiet, push.ClientAuth{}.As(push.RoleOpener))
		if err != nil {
			return err
		}
		var op *opening.Opener
		for op == nil { // NATS may be down right now
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			op, err = opening.NewOpener(ctx, opening.OpenerConfig{Verifier: shake.NewVerifier(seal, plan, ks, time.Hour, time.Minute, nil, nil),
				Conn: nc, Name: fmt.Sprintf("opener-%d", os.Getpid())})
			cancel()
			if err != nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
		op.Fault = faultFor(role, c.Fault)
		_, err = opening.Serve(nc, op, 64)
		return err
	case "ledger":
		l, err := opening.OpenLedger(filepath.Join(c.Root, "ledger.db"), quiet)
		if err != nil {
			return err
		}
		nc, err := push.Connect(url, "chaos-ledger", quiet, push.ClientAuth{}.As(push.RoleLedger))
		if err != nil {
			return err
		}
		plan, ks, seal, err := c.event()
		if err != nil {
			return err
		}
		l.SetVerifier(shake.NewVerifier(seal, plan, ks, time.Hour, time.Minute, nil, nil))
		js, _ := jetstream.New(nc)
		l.AckWait = 3 * time.Second  // a killed predecessor's unacked batch comes back soon
		l.LeaseTTL = 2 * time.Second // and its lease runs out soon
		l.Name = fmt.Sprintf("ledger-%d", os.Getpid())
		l.Fault = faultFor(role, c.Fault)
		go func() {
			err := l.Run(context.Background(), js, 32)
			if c.Fault == faultLedgerAckFirst && err != nil { // the mutant "crashed": die like it
				suicide()
			}
		}()
		return nil
	case "gateway":
		_, _, seal, err := c.event()
		if err != nil {
			return err
		}
		iss, err := shake.NewIssuer(shake.IssuerConfig{Dir: filepath.Join(c.Root, "event"), StateDir: filepath.Join(c.Root, "state"),
			Start: c.SlotStart, SlotLen: 10 * time.Minute, Speed: 40, Logger: quiet}, shake.NewSealer(seal, 0))
		if err != nil {
			return err
		}
		if err := iss.Start(); err != nil {
			return err
		}
		nc, err := push.Connect(url, "chaos-gateway", quiet, push.ClientAuth{}.As(push.RoleGateway))
		if err != nil {
			return err
		}
		keys, err := auth.NewKeySet(1, map[uint32][]byte{1: c.TokenKey})
		if err != nil {
			return err
		}
		// SO_REUSEPORT lets the restarted gateway bind although the killed one
		// left TIME_WAIT connections on the port.
		for deadline := time.Now().Add(15 * time.Second); ; {
			s, err := gateway.New(gateway.Config{Listen: c.Gateway, Keys: keys, Logger: quiet, Loops: 2, ReusePort: true, // binds despite TIME_WAIT
				Shake: &gateway.ShakeConfig{Issuer: iss, Opener: &opening.Remote{NC: nc, Node: "chaos-gw"}, OpenTimeout: 2 * time.Second}})
			if err != nil {
				return err
			}
			if err = s.Start(); err == nil || time.Now().After(deadline) {
				return err
			}
			fmt.Fprintln(os.Stderr, "gateway: retrying listen:", err)
			time.Sleep(200 * time.Millisecond)
		}
	}
	return fmt.Errorf("unknown role %q", role)
}

// proc is one child process, restartable. A child that dies by itself (a
// crash point) is restarted after a short pause and counted.
type proc struct {
	t       *testing.T
	role    string
	env     []string
	argv    []string // the command; default: this test binary in role env
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logf    *os.File
	crashes atomic.Int64
	stopped bool
}

func (p *proc) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.startLocked()
}

func (p *proc) startLocked() {
	argv := p.argv
	if argv == nil {
		argv = []string{os.Args[0], "-test.run=^$"}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.logf, p.logf
	if err := cmd.Start(); err != nil {
		p.t.Error(err)
		return
	}
	p.stopped = false
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		_ = cmd.Wait()
		close(exited)
		time.Sleep(150 * time.Millisecond)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.cmd == cmd && !p.stopped { // died by itself: restart
			p.crashes.Add(1)
			p.startLocked()
		}
	}()
}

// kill sends SIGKILL and waits; the child stays down until start.
func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		p.cmd = nil
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ack is an OPEN the client was told succeeded.
type ack struct {
	uid    uint64
	amount uint64
}

// chaosRun configures one run.
type chaosRun struct {
	fault    string        // planted in the children
	duration time.Duration // of clients and kills
	kills    bool          // kill -9 a component now and then, every role at least once
	shipped  string        // if set, the opener and the ledger are this longlink binary
}

// chaosResult is what a run saw.
type chaosResult struct {
	problems []string // what the checker found: must be empty for a correct pipeline
	acked    int
	credited int
	kills    map[string]int
	crashes  map[string]int64
	log      string // tail of the children's log
}

func TestChaosKillsLoseNothingCreditNothingTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test: seconds of random kills")
	}
	t.Parallel() // mostly waiting: runs beside the mutant runs
	r := runChaos(t, chaosRun{fault: faultCrashPoints, duration: 12 * time.Second, kills: true})
	t.Logf("kills %v, crash points hit %v; acknowledged %d, credited %d", r.kills, r.crashes, r.acked, r.credited)
	for _, p := range r.problems {
		t.Error(p)
	}
	if len(r.problems) > 0 {
		t.Logf("children's log (tail):\n%s", r.log)
	}
	for _, role := range []string{"nats", "opener", "ledger", "gateway"} {
		if r.kills[role] == 0 {
			t.Errorf("no kill of the %s in this run", role)
		}
	}
	for _, role := range []string{"opener", "ledger"} {
		if r.crashes[role] == 0 {
			t.Errorf("the %s never reached its crash point", role)
		}
	}
}

// The same run with the opener and the ledger as the shipped binary
// (`longlink shake opener`, `longlink shake ledger`), not this test's own
// wiring; random kills only (the binary has no fault hooks).
func TestChaosShippedBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "longlink")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/longlink/longlink/cmd/longlink")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	r := runChaos(t, chaosRun{duration: 8 * time.Second, kills: true, shipped: bin})
	t.Logf("kills %v, restarts after exits %v; acknowledged %d, credited %d", r.kills, r.crashes, r.acked, r.credited)
	for _, p := range r.problems {
		t.Error(p)
	}
	if len(r.problems) > 0 {
		t.Logf("children's log (tail):\n%s", r.log)
	}
	for _, role := range []string{"nats", "opener", "ledger", "gateway"} {
		if r.kills[role] == 0 {
			t.Errorf("no kill of the %s in this run", role)
		}
	}
}

// The planted mutants of the issue (the ledger acknowledging before its
// commit, the opener answering OK before the claim is durable) must make
// the checker fail: otherwise the chaos test proves nothing.
func TestChaosCheckerCatchesPlantedMutants(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test")
	}
	t.Parallel()
	for _, fault := range []string{faultLedgerAckFirst, faultOpenerAnswerFirst} {
		t.Run(fault, func(t *testing.T) {
			t.Parallel()
			r := runChaos(t, chaosRun{fault: fault, duration: 4 * time.Second})
			t.Logf("acknowledged %d, credited %d; checker: %d problems", r.acked, r.credited, len(r.problems))
			if len(r.problems) == 0 {
				t.Fatalf("the checker did not notice the planted mutant %s", fault)
			}
			found := false
			for _, p := range r.problems {
				if strings.Contains(p, "not credited") {
					found = true
				}
			}
			if !found {
				t.Fatalf("no lost acknowledged open reported: %v", r.problems)
			}
		})
	}
}

// runChaos runs NATS, opener, ledger and gateway as child processes,
// clients that shake and open, optional kills, then checks per packet.
// Test-harness failures are fatal; what the checker finds is returned.
func runChaos(t *testing.T, run chaosRun) chaosResult {
	root := t.TempDir()
	ev := shaketest.Generate(t, root)
	tokenKey := []byte("0123456789abcdef0123456789abcdef")
	cfg := roleCfg{Root: root, NATS: freeAddr(t), Gateway: freeAddr(t), SlotStart: time.Now().Add(-time.Second), TokenKey: tokenKey, Fault: run.fault}
	cj, _ := json.Marshal(cfg)
	logf, err := os.Create(filepath.Join(root, "children.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	res := chaosResult{kills: map[string]int{}, crashes: map[string]int64{}}
	roles := []string{"nats", "opener", "ledger", "gateway"}
	procs := map[string]*proc{}
	for _, role := range roles {
		p := &proc{t: t, role: role, env: []string{"LONGLINK_CHAOS_ROLE=" + role, "LONGLINK_CHAOS_CFG=" + string(cj)}, logf: logf}
		if run.shipped != "" {
			ev := []string{"-dir", filepath.Join(root, "event"), "-keys", filepath.Join(root, "keys"), "-seal-keys", filepath.Join(root, "sealkeys"), "-nats", "nats://" + cfg.NATS}
			switch role {
			case "opener":
				p.argv, p.env = append([]string{run.shipped, "shake", "opener", "-workers", "64"}, ev...), nil
			case "ledger":
				p.argv, p.env = append([]string{run.shipped, "shake", "ledger", "-db", filepath.Join(root, "ledger.db"), "-lease", "2s", "-ack-wait", "3s", "-batch", "32"}, ev...), nil
			}
		}
		procs[role] = p
		p.start()
		defer p.kill()
		time.Sleep(300 * time.Millisecond)
	}
	keys, _ := auth.NewKeySet(1, map[uint32][]byte{1: tokenKey})

	// Clients: shake until a ticket, open it until a definitive answer.
	var (
		mu    sync.Mutex
		acked = map[uint64]ack{} // packet id → what the user was told
		wg    sync.WaitGroup
	)
	problem := func(format string, a ...any) {
		mu.Lock()
		res.problems = append(res.problems, fmt.Sprintf(format, a...))
		mu.Unlock()
	}
	ctx, stopClients := context.WithCancel(context.Background())
	for u := 1; u <= 8; u++ {
		wg.Add(1)
		go func(uid uint64) {
			defer wg.Done()
			tok, _ := keys.Mint(uid, "d", time.Now().Add(time.Hour))
			dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			c, err := client.Dial(dctx, client.Options{Addr: cfg.Gateway, Token: tok, Device: "d", BackoffMin: 50 * time.Millisecond, BackoffMax: 300 * time.Millisecond})
			cancel()
			if err != nil {
				problem("uid %d: dial: %v", uid, err)
				return
			}
			defer c.Close()
			for ctx.Err() == nil {
				sctx, cancel := context.WithTimeout(ctx, time.Second)
				r, err := c.Shake(sctx)
				cancel()
				if err != nil || r.Result != 0 {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				// Keep opening this ticket, even across kills, until a definitive answer.
				octx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				o, err := c.OpenRetrying(octx, r.Ticket)
				cancel()
				switch {
				case err != nil:
					problem("uid %d: open never answered: %v", uid, err)
				case o.Code != 0:
					problem("uid %d: open answered code %d (%s)", uid, o.Code, o.Message)
				default:
					mu.Lock()
					if prev, ok := acked[o.PacketId]; ok && prev.uid != uid {
						res.problems = append(res.problems, fmt.Sprintf("packet %d acknowledged to users %d and %d", o.PacketId, prev.uid, uid))
					}
					acked[o.PacketId] = ack{uid: uid, amount: o.AmountFen}
					mu.Unlock()
				}
			}
		}(uint64(u))
	}

	// Chaos: kill -9 a component every 0.5–1.3 s, restart it 0.1–0.6 s
	// later; the roles in a fresh random order each round, so every role
	// is killed at least once in a run of four kills or more.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	end := time.Now().Add(run.duration)
	var order []string
	for time.Now().Before(end) {
		time.Sleep(time.Duration(500+rng.IntN(800)) * time.Millisecond)
		if !run.kills {
			continue
		}
		if len(order) == 0 {
			order = append([]string(nil), roles...)
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		role := order[0]
		order = order[1:]
		procs[role].kill()
		res.kills[role]++
		time.Sleep(time.Duration(100+rng.IntN(500)) * time.Millisecond)
		procs[role].start()
	}
	time.Sleep(2 * time.Second) // let the open retries in flight finish
	stopClients()
	wg.Wait()
	for role, p := range procs {
		res.crashes[role] = p.crashes.Load()
	}
	if data, err := os.ReadFile(filepath.Join(root, "children.log")); err == nil {
		res.log = string(data[max(0, len(data)-3000):])
	}
	res.acked = len(acked)
	if len(acked) < 20 {
		t.Fatalf("only %d opens acknowledged: the test exercised too little; children:\n%s", len(acked), res.log)
	}

	// Drain: wait until the ledger consumer has nothing pending, then stop it
	// and read its file.
	nc, err := nats.Connect("nats://"+cfg.NATS, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var queued uint64
	deadline := time.Now().Add(25 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		cons, err := js.Consumer(cctx, opening.StreamName, opening.LedgerDurable)
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = cons.Info(cctx)
		}
		st, serr := js.Stream(cctx, opening.StreamName)
		var sinfo *jetstream.StreamInfo
		if serr == nil {
			sinfo, serr = st.Info(cctx)
		}
		cancel()
		if err == nil && serr == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			queued = sinfo.State.Msgs
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger did not catch up: %+v %v %v", info, err, serr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	procs["ledger"].kill()
	l, err := opening.OpenLedger(filepath.Join(root, "ledger.db"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	csv := filepath.Join(root, "ledger.csv")
	f, _ := os.Create(csv)
	n, err := l.Export(f, ev.Plan.Tag)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	res.credited = n
	balances, _ := l.Balances()
	res.problems = append(res.problems, check(t, ev, csv, acked, balances, queued)...)
	return res
}

// check compares per packet: every acknowledged (packet, user, amount) is
// credited exactly once, to that user, for that amount; every claim on the
// queue is credited; each balance is exactly the sum of its user's
// credited packets (a second credit would show there); and reconcile,
// users included, is clean.
func check(t *testing.T, ev *shaketest.Event, csv string, acked map[uint64]ack, balances map[uint64]shake.Money, queued uint64) []string {
	var problems []string
	f, err := os.Open(csv)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lr, err := shake.NewLedgerReader(f)
	if err != nil {
		t.Fatal(err)
	}
	credited := map[uint64]shake.LedgerEntry{}
	perUser := map[uint64]shake.Money{}
	for {
		e, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := credited[e.PacketID]; dup {
			problems = append(problems, fmt.Sprintf("packet %d credited twice", e.PacketID))
		}
		credited[e.PacketID] = e
		perUser[e.UID] += e.Amount
	}
	for pid, a := range acked {
		e, ok := credited[pid]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("packet %d acknowledged to uid %d (%d fen) but not credited", pid, a.uid, a.amount))
		case e.UID != a.uid || uint64(e.Amount) != a.amount:
			problems = append(problems, fmt.Sprintf("packet %d acknowledged to uid %d for %d fen, credited to uid %d for %d", pid, a.uid, a.amount, e.UID, e.Amount))
		}
	}
	if uint64(len(credited)) != queued {
		problems = append(problems, fmt.Sprintf("%d claims on the queue, %d credited (not credited: lost claims)", queued, len(credited)))
	}
	for uid, b := range balances {
		if b != perUser[uid] {
			problems = append(problems, fmt.Sprintf("uid %d balance %s, its credited packets sum to %s", uid, b, perUser[uid]))
		}
	}
	rep, err := ev.Reconcile(csv)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		problems = append(problems, fmt.Sprintf("reconcile: %+v", rep))
	}
	return problems
}
