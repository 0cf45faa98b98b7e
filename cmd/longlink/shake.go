package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/term"

	"github.com/longlink/longlink/shake"
)

// The shake subcommands are thin: flags in, a call into package shake, a
// report out. Progress bars go to stdout only when it is a terminal.

func init() {
	register(command{name: "shake", summary: "shake red packets: keys, check, gen, split, verify, reconcile, opener, ledger", run: runShake})
}

var shakeCommands = []struct {
	name, summary string
	run           func(args []string) int
}{
	{"keys", "create a key store (0700 directory, 0600 file) with N fresh AES-128 keys", shakeKeys},
	{"check", "validate a budget and show the batches, packets and keys of its plans", shakeCheck},
	{"gen", "generate the encrypted ticket files of one plan", shakeGen},
	{"split", "split slot files per gateway instance, each part with a backup on another instance", shakeSplit},
	{"verify", "decrypt and check every record, dedupe packet ids, compare sums with the plan", shakeVerify},
	{"reconcile", "check a ledger of opened packets against the ticket files", shakeReconcile},
	{"fake-ledger", "write a ledger opening a fraction of the packets (to exercise reconcile)", shakeFakeLedger},
	{"opener", "run an opener service (verify, claim, enqueue) for gateways with --shake-opener remote", shakeOpener},
	{"ledger", "run the ledger consumer: credit opened packets exactly once into a bbolt file", shakeLedger},
	{"ledger-export", "export a ledger file as the CSV that reconcile reads", shakeLedgerExport},
}

func runShake(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "help" || args[0] == "--help" {
		fmt.Fprintf(os.Stderr, "Usage: longlink shake <command> [flags]\n\nCommands:\n")
		for _, c := range shakeCommands {
			fmt.Fprintf(os.Stderr, "  %-12s %s\n", c.name, c.summary)
		}
		fmt.Fprintf(os.Stderr, "\nFile formats and the design: docs/shake.md\n")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range shakeCommands {
		if c.name == args[0] {
			return c.run(args[1:])
		}
	}
	fmt.Fprintf(os.Stderr, "longlink shake: unknown command %q\n", args[0])
	return 2
}

func shakeFail(err error) int {
	fmt.Fprintln(os.Stderr, "longlink shake:", err)
	return 1
}

// bar returns a progress bar on stdout if it is a terminal, else nil.
func bar(label string, total uint64) (*shake.Bar, shake.Progress) {
	if !term.IsTerminal(int(os.Stdout.Fd())) {
		return nil, nil
	}
	b := shake.NewBar(os.Stdout, label, int64(total))
	return b, b
}

func finishBar(b *shake.Bar) {
	if b != nil {
		b.Finish()
	}
}

// exitStatus is a check's exit status: 0 if every report is OK, else 1.
func exitStatus(oks ...bool) int {
	for _, ok := range oks {
		if !ok {
			return 1
		}
	}
	return 0
}

// eventFlags name a generated event: its directory and its ticket keys.
type eventFlags struct{ dir, keys *string }

func addEventFlags(fs *flag.FlagSet) eventFlags {
	return eventFlags{
		dir:  fs.String("dir", "shake-out", "directory written by shake gen or shake split"),
		keys: fs.String("keys", "shake-keys", "key store directory"),
	}
}

func shakeKeys(args []string) int {
	fs := newFlagSet("shake keys", "Create a key store directory holding N fresh random AES-128 keys (ids 0..N-1).\nKeep it away from the ticket files; it is never printed.")
	dir := fs.String("keys", "shake-keys", "key store directory to create")
	n := fs.Int("n", 1000, "number of keys")
	if !parseFlags(fs, args) {
		return 2
	}
	if err := shake.CreateKeyStore(*dir, *n); err != nil {
		return shakeFail(err)
	}
	fmt.Printf("created %s with %d keys\n", *dir, *n)
	return 0
}

func shakeCheck(args []string) int {
	fs := newFlagSet("shake check", "Validate a budget (YAML or JSON) and show what each plan turns into.")
	budget := fs.String("budget", "budget.yaml", "budget file")
	plan := fs.String("plan", "", "only this plan (default: all)")
	verbose := fs.Bool("v", false, "list every batch")
	if !parseFlags(fs, args) {
		return 2
	}
	b, err := shake.LoadBudget(*budget)
	if err != nil {
		return shakeFail(err)
	}
	fmt.Printf("budget %q: %d merchants, %d kinds, %d plans: OK\n", b.Name, len(b.Merchants), len(b.Kinds), len(b.Plans))
	for _, ps := range b.Plans {
		if *plan != "" && ps.Name != *plan {
			continue
		}
		p, err := shake.BuildPlan(b, ps.Name)
		if err != nil {
			return shakeFail(err)
		}
		fmt.Printf("plan %q: %d slots, %d batches, %d packets, %s yuan, %d keys at %s per key\n",
			p.Name, len(p.Slots), len(p.Batches), p.Packets, p.Amount, p.Keys, p.KeyLimit)
		if *verbose {
			for _, bt := range p.Batches {
				fmt.Printf("  batch %-5d slot %-4d %-8s %-12s %10d packets %14s in [%s, %s]\n",
					bt.ID, bt.Slot, bt.Kind, p.Merchants[bt.Merchant].ID, bt.Count, bt.Amount, bt.Min, bt.Max)
			}
		}
	}
	return 0
}

func shakeGen(args []string) int {
	fs := newFlagSet("shake gen", "Generate the ticket files of one plan: OUT/slot-NNNNNN.llt and OUT/plan.json (the batch configuration).")
	budget := fs.String("budget", "budget.yaml", "budget file")
	planName := fs.String("plan", "", "plan to generate (required when the budget has several)")
	keys := fs.String("keys", "shake-keys", "key store directory")
	out := fs.String("out", "shake-out", "output directory (must not hold a plan already)")
	seed := fs.String("seed", "", "make the run reproducible from this seed (default: fresh from crypto/rand, not stored)")
	workers := fs.Int("workers", 0, "generator goroutines (default GOMAXPROCS)")
	chunk := fs.Int("chunk", 0, "records shuffled together (default 131072)")
	if !parseFlags(fs, args) {
		return 2
	}
	b, err := shake.LoadBudget(*budget)
	if err != nil {
		return shakeFail(err)
	}
	if *planName == "" {
		if len(b.Plans) != 1 {
			return shakeFail(errors.New("the budget has several plans: choose one with -plan"))
		}
		*planName = b.Plans[0].Name
	}
	p, err := shake.BuildPlan(b, *planName)
	if err != nil {
		return shakeFail(err)
	}
	ks, err := shake.LoadKeyStore(*keys)
	if err != nil {
		return shakeFail(err)
	}
	if _, err := os.Stat(filepath.Join(*out, shake.PlanFile)); err == nil {
		return shakeFail(fmt.Errorf("%s already holds a plan; use another -out", *out))
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return shakeFail(err)
	}
	opts := shake.GenOptions{Workers: *workers, Chunk: *chunk}
	if *seed != "" {
		opts.Seed = []byte(*seed)
	}
	bb, prog := bar("gen", p.Packets)
	opts.Progress = prog
	err = shake.Generate(p, ks, opts, shake.DirSink{Dir: *out})
	finishBar(bb)
	if err != nil {
		return shakeFail(err)
	}
	if err := p.WritePlan(*out); err != nil {
		return shakeFail(err)
	}
	fmt.Printf("plan %q: %d records in %d slot files, %s yuan, keys 0..%d, in %s\n", p.Name, p.Packets, len(p.Slots), p.Amount, p.Keys-1, *out)
	return 0
}

func shakeSplit(args []string) int {
	fs := newFlagSet("shake split", "Split the slot files of IN into OUT/inst-NNN/ per gateway instance, each part with a backup copy on another instance.")
	in := fs.String("in", "shake-out", "directory written by shake gen")
	out := fs.String("out", "shake-split", "output directory")
	n := fs.Int("instances", 2, "gateway instances (at least 2)")
	if !parseFlags(fs, args) {
		return 2
	}
	p, err := shake.LoadPlan(*in)
	if err != nil {
		return shakeFail(err)
	}
	bb, prog := bar("split", p.Packets)
	m, err := shake.Split(p, *in, *out, *n, prog)
	finishBar(bb)
	if err != nil {
		return shakeFail(err)
	}
	fmt.Printf("%d parts over %d instances (each with a backup elsewhere) in %s\n", len(m.Parts), m.Instances, *out)
	return 0
}

func parseKeyIDs(s string) ([]uint16, error) {
	var ids []uint16
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseUint(f, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("key id %q: %v", f, err)
		}
		ids = append(ids, uint16(v))
	}
	return ids, nil
}

// loadSealKeys loads a seal key store.
func loadSealKeys(dir string) (*shake.SealKeys, error) {
	sks, err := shake.LoadKeyStore(dir)
	if err != nil {
		return nil, err
	}
	return shake.NewSealKeys(sks)
}

// load loads the event's plan, its key store and its ticket files.
func (e eventFlags) load() (*shake.Plan, *shake.KeyStore, []string, error) {
	p, err := shake.LoadPlan(*e.dir)
	if err != nil {
		return nil, nil, nil, err
	}
	ks, err := shake.LoadKeyStore(*e.keys)
	if err != nil {
		return nil, nil, nil, err
	}
	files, err := ticketFiles(p, *e.dir)
	return p, ks, files, err
}

// ticketFiles lists a gen directory's slot files, or a split directory's
// primary part files.
func ticketFiles(p *shake.Plan, dir string) ([]string, error) {
	if _, err := os.Stat(filepath.Join(dir, shake.SplitFile)); err == nil {
		m, err := shake.LoadSplit(p, dir)
		if err != nil {
			return nil, err
		}
		var files []string
		for _, part := range m.Parts {
			files = append(files, filepath.Join(dir, part.PrimaryPath))
		}
		return files, nil
	}
	var files []string
	for _, s := range p.Slots {
		files = append(files, filepath.Join(dir, shake.SlotFileName(s.ID)))
	}
	return files, nil
}

func shakeVerify(args []string) int {
	fs := newFlagSet("shake verify", "Decrypt and check every record of a gen or split directory against its plan.json.")
	ev := addEventFlags(fs)
	deny := fs.String("blacklist", "", "comma-separated key ids to reject")
	allow := fs.String("whitelist", "", "comma-separated key ids to accept (default: all in the store)")
	workers := fs.Int("workers", 0, "goroutines (default GOMAXPROCS)")
	if !parseFlags(fs, args) {
		return 2
	}
	p, ks, files, err := ev.load()
	if err != nil {
		return shakeFail(err)
	}
	opts := shake.VerifyOptions{Workers: *workers}
	if opts.Deny, err = parseKeyIDs(*deny); err != nil {
		return shakeFail(err)
	}
	if opts.Allow, err = parseKeyIDs(*allow); err != nil {
		return shakeFail(err)
	}
	if _, err := os.Stat(filepath.Join(*ev.dir, shake.SplitFile)); err == nil {
		bb, prog := bar("verify", 2*p.Packets)
		opts.Progress = prog
		pr, br, err := shake.VerifySplit(p, ks, *ev.dir, opts)
		finishBar(bb)
		if err != nil {
			return shakeFail(err)
		}
		fmt.Println("== primary copies")
		pr.Print(os.Stdout, p)
		fmt.Println("== backup copies")
		br.Print(os.Stdout, p)
		return exitStatus(pr.OK(), br.OK())
	}
	bb, prog := bar("verify", p.Packets)
	opts.Progress = prog
	r, err := shake.Verify(p, ks, files, opts)
	finishBar(bb)
	if err != nil {
		return shakeFail(err)
	}
	r.Print(os.Stdout, p)
	return exitStatus(r.OK())
}

func shakeReconcile(args []string) int {
	fs := newFlagSet("shake reconcile", "Check a ledger export of opened packets (CSV: packet_id,amount_fen,…) against the ticket files.")
	ev := addEventFlags(fs)
	ledger := fs.String("ledger", "ledger.csv", "ledger export")
	shard := fs.Uint64("shard", 0, "packet ids per pass, bounding memory at 4 bytes each (default 268435456)")
	workers := fs.Int("workers", 0, "goroutines (default GOMAXPROCS)")
	sealKeys := fs.String("seal-keys", "", "seal key store: check each credited packet's user against its sealed ticket (the ledger export's sealed column); without it users are not checked")
	if !parseFlags(fs, args) {
		return 2
	}
	p, ks, files, err := ev.load()
	if err != nil {
		return shakeFail(err)
	}
	var seal *shake.SealKeys
	if *sealKeys != "" {
		if seal, err = loadSealKeys(*sealKeys); err != nil {
			return shakeFail(err)
		}
	}
	bb, prog := bar("reconcile", p.Packets)
	r, err := shake.Reconcile(p, ks, files, *ledger, shake.ReconcileOptions{Workers: *workers, Progress: prog, ShardPackets: *shard, SealKeys: seal})
	finishBar(bb)
	if err != nil {
		return shakeFail(err)
	}
	r.Print(os.Stdout, p)
	return exitStatus(r.OK())
}

func shakeFakeLedger(args []string) int {
	fs := newFlagSet("shake fake-ledger", "Write a ledger export that opens a random fraction of the packets, as part 2 would (for testing reconcile).")
	ev := addEventFlags(fs)
	out := fs.String("out", "ledger.csv", "ledger file to write")
	frac := fs.Float64("fraction", 0.9, "fraction of packets opened")
	if !parseFlags(fs, args) {
		return 2
	}
	p, ks, files, err := ev.load()
	if err != nil {
		return shakeFail(err)
	}
	f, err := os.Create(*out)
	if err != nil {
		return shakeFail(err)
	}
	lw, err := shake.NewLedgerWriter(f)
	if err != nil {
		return shakeFail(err)
	}
	o := shake.NewChecker(p, ks, nil, nil).NewOpener()
	var n uint64
	for _, path := range files {
		tf, err := shake.OpenFile(path)
		if err != nil {
			return shakeFail(err)
		}
		for i := 0; i < tf.Len(); i++ {
			if rand.Float64() >= *frac {
				continue
			}
			t, err := o.Open(tf.Record(i))
			if err != nil {
				return shakeFail(fmt.Errorf("%s record %d: %w", path, i, err))
			}
			if err := lw.Write(t.PacketID, t.Amount, rand.Uint64N(1e9), "2016-02-07T20:00:00+08:00"); err != nil {
				return shakeFail(err)
			}
			n++
		}
		tf.Close()
	}
	if err := lw.Flush(); err != nil {
		return shakeFail(err)
	}
	if err := f.Close(); err != nil {
		return shakeFail(err)
	}
	fmt.Fprintf(io.Writer(os.Stdout), "wrote %d opened packets to %s\n", n, *out)
	return 0
}
