package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/longlink/longlink/shake/shaketest"
)

// TestShakeCommandsEndToEnd runs the offline shake commands on a small
// budget: keys, check, gen, split, verify (whole and split), fake-ledger,
// reconcile; then a wrong key store and bad key ids fail as they should.
func TestShakeCommandsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	budget := filepath.Join(dir, "budget.yaml")
	if err := os.WriteFile(budget, []byte(shaketest.Budget), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, other, out, split, ledger := filepath.Join(dir, "keys"), filepath.Join(dir, "other"), filepath.Join(dir, "out"), filepath.Join(dir, "split"), filepath.Join(dir, "ledger.csv")
	run := func(want int, wantOut string, args ...string) string {
		t.Helper()
		rc, stdout, stderr := runCaptured(t, runShake, args...)
		if rc != want || !strings.Contains(stdout, wantOut) {
			t.Fatalf("shake %v: exit %d (want %d), stdout %q (want %q), stderr %q", args, rc, want, stdout, wantOut, stderr)
		}
		return stdout
	}
	run(0, "with 4 keys", "keys", "-keys", keys, "-n", "4")
	run(0, "with 4 keys", "keys", "-keys", other, "-n", "4")
	run(0, `plan "A": 2 slots`, "check", "-budget", budget)
	run(0, "10000 records in 2 slot files", "gen", "-budget", budget, "-keys", keys, "-out", out, "-seed", "s")
	run(1, "", "gen", "-budget", budget, "-keys", keys, "-out", out) // already holds a plan
	run(0, "over 2 instances", "split", "-in", out, "-out", split, "-instances", "2")
	run(0, "records 10000, plan \"A\": 10000 packets, 50000.00", "verify", "-dir", out, "-keys", keys)
	if o := run(0, "== backup copies", "verify", "-dir", split, "-keys", keys); strings.Count(o, "\nOK\n") != 2 {
		t.Fatalf("split verify: want both copies OK:\n%s", o)
	}
	run(1, "bad ticket 10000", "verify", "-dir", out, "-keys", other)
	run(1, "", "verify", "-dir", out, "-keys", keys, "-blacklist", "x")
	run(1, "blacklisted key 10000", "verify", "-dir", out, "-keys", keys, "-blacklist", "0,1,2,3")
	run(0, "key not whitelisted 0", "verify", "-dir", out, "-keys", keys, "-whitelist", "0,1,2")
	run(0, "opened packets to "+ledger, "fake-ledger", "-dir", out, "-keys", keys, "-out", ledger, "-fraction", "0.5")
	run(0, "\nOK\n", "reconcile", "-dir", out, "-keys", keys, "-ledger", ledger)
	run(0, "\nOK\n", "reconcile", "-dir", split, "-keys", keys, "-ledger", ledger)
	run(1, "FAILED", "reconcile", "-dir", out, "-keys", other, "-ledger", ledger)
	run(1, "", "fake-ledger", "-dir", filepath.Join(dir, "none"), "-keys", keys, "-out", ledger)
	run(2, "", "nonsense")
}

// TestShakeServiceFlags: the opener and the ledger check the event flags
// they share before they dial NATS: all three stores are required, and bad
// key id lists and a bad event fail naming the problem.
func TestShakeServiceFlags(t *testing.T) {
	ev := shaketest.Generate(t, t.TempDir())
	for _, cmd := range []string{"opener", "ledger"} {
		for _, c := range []struct {
			args []string
			want string
		}{
			{nil, "-dir, -keys and -seal-keys are required"},
			{[]string{"-dir", ev.Dir, "-keys", ev.KeyDir}, "-dir, -keys and -seal-keys are required"},
			{[]string{"-dir", ev.Dir, "-keys", ev.KeyDir, "-seal-keys", ev.SealDir, "-whitelist", "1,x"}, `key id "x"`},
			{[]string{"-dir", ev.Dir, "-keys", ev.KeyDir, "-seal-keys", ev.SealDir, "-blacklist", "70000"}, `key id "70000"`},
			{[]string{"-dir", ev.KeyDir, "-keys", ev.KeyDir, "-seal-keys", ev.SealDir}, "plan.json"},
			{[]string{"-dir", ev.Dir, "-keys", filepath.Join(ev.Dir, "none"), "-seal-keys", ev.SealDir}, "none"},
		} {
			args := append([]string{cmd, "-nats", "nats://127.0.0.1:1"}, c.args...)
			if rc, _, stderr := runCaptured(t, runShake, args...); rc != 1 || !strings.Contains(stderr, c.want) {
				t.Errorf("shake %v: exit %d, stderr %q; want 1 and %q", args, rc, stderr, c.want)
			}
		}
	}
}
