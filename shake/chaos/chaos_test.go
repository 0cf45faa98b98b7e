// Package chaos_test kills the shake pipeline's components with SIGKILL at
// random moments while clients shake and open, then proves with the ledger
// and `shake reconcile` that no acknowledged open was lost and nothing was
// credited twice. Each component is a separate process: this test binary
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
	"sync"
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
		js, _ := jetstream.New(nc)
		l.AckWait = 3 * time.Second // a killed predecessor's unacked batch comes back soon
		go func() { _ = l.Run(context.Background(), js, 32) }()
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

// proc is one child process, restartable.
type proc struct {
	t    *testing.T
	role string
	env  []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	logf *os.File
}

func (p *proc) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.logf, p.logf
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd = cmd
}

func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
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

func TestChaosKillsLoseNothingCreditNothingTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test: seconds of random kills")
	}
	root := t.TempDir()
	ev := shaketest.Generate(t, root)
	tokenKey := []byte("0123456789abcdef0123456789abcdef")
	cfg := roleCfg{Root: root, NATS: freeAddr(t), Gateway: freeAddr(t), SlotStart: time.Now().Add(-time.Second), TokenKey: tokenKey}
	cj, _ := json.Marshal(cfg)
	logf, err := os.Create(filepath.Join(root, "children.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	procs := map[string]*proc{}
	for _, role := range []string{"nats", "opener", "ledger", "gateway"} {
		p := &proc{t: t, role: role, env: []string{"LONGLINK_CHAOS_ROLE=" + role, "LONGLINK_CHAOS_CFG=" + string(cj)}, logf: logf}
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
		bad   []string
		wg    sync.WaitGroup
	)
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
				mu.Lock()
				bad = append(bad, fmt.Sprintf("uid %d: dial: %v", uid, err))
				mu.Unlock()
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
				mu.Lock()
				switch {
				case err != nil:
					bad = append(bad, fmt.Sprintf("uid %d: open never answered: %v", uid, err))
				case o.Code != 0:
					bad = append(bad, fmt.Sprintf("uid %d: open answered code %d (%s)", uid, o.Code, o.Message))
				default:
					if prev, ok := acked[o.PacketId]; ok && prev.uid != uid {
						bad = append(bad, fmt.Sprintf("packet %d acknowledged to users %d and %d", o.PacketId, prev.uid, uid))
					}
					acked[o.PacketId] = ack{uid: uid, amount: o.AmountFen}
				}
				mu.Unlock()
			}
		}(uint64(u))
	}

	// Chaos: kill -9 a random component every 0.6–1.8 s, restart it
	// 0.1–0.8 s later.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	roles := []string{"nats", "opener", "ledger", "gateway"}
	kills := map[string]int{}
	end := time.Now().Add(18 * time.Second)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(600+rng.IntN(1200)) * time.Millisecond)
		role := roles[rng.IntN(len(roles))]
		procs[role].kill()
		kills[role]++
		time.Sleep(time.Duration(100+rng.IntN(700)) * time.Millisecond)
		procs[role].start()
	}
	time.Sleep(2 * time.Second) // let the open retries in flight finish
	stopClients()
	wg.Wait()
	t.Logf("kills: %v; acknowledged opens: %d", kills, len(acked))
	for _, b := range bad {
		t.Error(b)
	}
	if len(bad) > 0 {
		if data, err := os.ReadFile(filepath.Join(root, "children.log")); err == nil {
			t.Logf("children's log (tail):\n%s", data[max(0, len(data)-3000):])
		}
	}
	if len(acked) < 20 {
		t.Fatalf("only %d opens acknowledged: the test exercised too little", len(acked))
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
	deadline := time.Now().Add(20 * time.Second)
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
	// Every queued (claimed) packet was credited, once; every acknowledged
	// open is among them, with the amount and user the client was told.
	if uint64(n) != queued {
		t.Fatalf("ledger has %d packets, the queue %d", n, queued)
	}
	rep, err := ev.Reconcile(csv)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("reconcile: %+v", rep)
	}
	balances, _ := l.Balances()
	want := map[uint64]shake.Money{}
	for _, a := range acked {
		want[a.uid] += shake.Money(a.amount)
	}
	var credited shake.Money
	for uid, b := range balances {
		credited += b
		if b < want[uid] {
			t.Errorf("uid %d credited %d, but was told %d", uid, b, want[uid])
		}
	}
	if credited != rep.Opened.Amount {
		t.Fatalf("balances sum to %d, ledger entries to %d", credited, rep.Opened.Amount)
	}
	t.Logf("queued %d, credited %d packets (%d fen); acknowledged %d; reconcile clean", queued, n, credited, len(acked))
}
