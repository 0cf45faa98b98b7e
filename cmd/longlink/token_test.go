package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/auth"
)

// runCaptured runs a subcommand with stdout and stderr captured.
func runCaptured(t *testing.T, run func([]string) int, args ...string) (rc int, stdout, stderr string) {
	t.Helper()
	dir := t.TempDir()
	out, _ := os.Create(filepath.Join(dir, "out"))
	errf, _ := os.Create(filepath.Join(dir, "err"))
	so, se := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = out, errf
	rc = run(args)
	os.Stdout, os.Stderr = so, se
	out.Close()
	errf.Close()
	o, _ := os.ReadFile(out.Name())
	e, _ := os.ReadFile(errf.Name())
	return rc, string(o), string(e)
}

// TestTokenNeverCreatesKeysUnasked (issue 17): `longlink token --data
// <typo>` used to create a directory and a key there and print a token no
// gateway accepts. Now it fails naming the path; --create makes the key.
func TestTokenNeverCreatesKeysUnasked(t *testing.T) {
	typo := filepath.Join(t.TempDir(), "dtaa")
	rc, out, errOut := runCaptured(t, runToken, "--uid", "7", "--data", typo)
	if rc != 1 || out != "" {
		t.Fatalf("missing key file: rc %d, stdout %q", rc, out)
	}
	if want := auth.KeyFile(typo); !strings.Contains(errOut, want) || !strings.Contains(errOut, "--create") {
		t.Fatalf("error should name %s and --create: %q", want, errOut)
	}
	if _, err := os.Stat(typo); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("token created %s", typo)
	}
	rc, _, errOut = runCaptured(t, runToken, "--uid", "7", "--keys", filepath.Join(typo, "k.json"))
	if rc != 1 || !strings.Contains(errOut, filepath.Join(typo, "k.json")) {
		t.Fatalf("--keys typo: rc %d, %q", rc, errOut)
	}

	// --create makes the key; later runs load it and mint tokens it verifies.
	rc, tok1, _ := runCaptured(t, runToken, "--uid", "7", "--data", typo, "--create")
	if rc != 0 || tok1 == "" {
		t.Fatalf("--create: rc %d", rc)
	}
	rc, tok2, _ := runCaptured(t, runToken, "--uid", "8", "--data", typo)
	if rc != 0 {
		t.Fatalf("existing key: rc %d", rc)
	}
	ks, err := auth.LoadKeyFile(auth.KeyFile(typo))
	if err != nil {
		t.Fatal(err)
	}
	for uid, tok := range map[uint64]string{7: tok1, 8: tok2} {
		if c, err := ks.Verify(strings.TrimSpace(tok), time.Now()); err != nil || c.UID != uid {
			t.Fatalf("token for %d: %+v %v", uid, c, err)
		}
	}

	// A key file others can read is refused, naming the fix.
	os.Chmod(auth.KeyFile(typo), 0o644)
	rc, _, errOut = runCaptured(t, runToken, "--uid", "7", "--data", typo)
	if rc != 1 || !strings.Contains(errOut, "chmod 600") {
		t.Fatalf("0644 key file: rc %d, %q", rc, errOut)
	}
}
