package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/longlink/longlink/secure"
)

func TestKeysCreateRotateRetire(t *testing.T) {
	file := filepath.Join(t.TempDir(), "k", "server-keys.json")
	if code := runKeys([]string{"--file", file}); code != 0 {
		t.Fatalf("create: exit %d", code)
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", fi, err)
	}
	if code := runKeys([]string{"--file", file, "--new"}); code != 0 {
		t.Fatalf("rotate: exit %d", code)
	}
	r, err := secure.LoadKeyRing(file)
	if err != nil || r.Active().ID != 2 || len(r.IDs()) != 2 {
		t.Fatalf("after rotate: %v %v", r.IDs(), err)
	}
	if code := runKeys([]string{"--file", file, "--retire", "2"}); code == 0 {
		t.Fatal("retired the active key")
	}
	if code := runKeys([]string{"--file", file, "--retire", "1"}); code != 0 {
		t.Fatalf("retire: exit %d", code)
	}
	if r, _ = secure.LoadKeyRing(file); len(r.IDs()) != 1 || r.Active().ID != 2 {
		t.Fatalf("after retire: %v", r.IDs())
	}
}
