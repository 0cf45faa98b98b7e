package keyfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	tokenLike  = Format{Owner: "auth", Field: "secret", Noun: "secret", MinSize: 16, Stamp: true}
	serverLike = Format{Owner: "secure", Field: "private", Noun: "private key", Size: 32}
	fleetLike  = Format{Owner: "fleet", Field: "private", Noun: "private key", Size: 32, NoZero: true}
)

func hex32(b byte) string { return strings.Repeat(string("0123456789abcdef"[b&15]), 64) }

// TestMarshalIsTheOnDiskForm: the bytes are those the three packages wrote
// before they shared this code (field order, indent, final newline).
func TestMarshalIsTheOnDiskForm(t *testing.T) {
	secret := bytes.Repeat([]byte{0xaa}, 32)
	got, err := tokenLike.Marshal(Set{Active: 1, Keys: []Key{{ID: 1, Secret: secret, Created: "2026-12-01T16:17:03Z"}}})
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"active\": 1,\n  \"keys\": [\n    {\n      \"id\": 1,\n      \"secret\": \"" + hex32(0xa) +
		"\",\n      \"created\": \"2026-12-01T16:17:03Z\"\n    }\n  ]\n}\n"
	if string(got) != want {
		t.Fatalf("token form:\n%s\nwant\n%s", got, want)
	}
	got, err = serverLike.Marshal(Set{Active: 2, Keys: []Key{{ID: 1, Secret: secret}, {ID: 2, Secret: bytes.Repeat([]byte{0xbb}, 32)}}})
	if err != nil {
		t.Fatal(err)
	}
	want = "{\n  \"active\": 2,\n  \"keys\": [\n    {\n      \"id\": 1,\n      \"private\": \"" + hex32(0xa) +
		"\"\n    },\n    {\n      \"id\": 2,\n      \"private\": \"" + hex32(0xb) + "\"\n    }\n  ]\n}\n"
	if string(got) != want {
		t.Fatalf("server form:\n%s\nwant\n%s", got, want)
	}
	back, err := serverLike.Parse(got)
	if err != nil || back.Active != 2 || len(back.Keys) != 2 || !bytes.Equal(back.Keys[0].Secret, secret) {
		t.Fatalf("parse back: %+v %v", back, err)
	}
}

func TestParseRefusesBadFiles(t *testing.T) {
	k := func(id, hex string) string { return `{"id": ` + id + `, "private": "` + hex + `"}` }
	for _, c := range []struct {
		f        Format
		file     string
		wantText string
	}{
		{serverLike, `{not json`, "secure: "},
		{serverLike, `{"active": 1, "keys": []}`, "no keys"},
		{serverLike, `{"active": 1, "keys": [` + k("1", "zz") + `]}`, "key 1: the private key is not hex"},
		{serverLike, `{"active": 1, "keys": [` + k("1", "abcd") + `]}`, "key 1: the private key must be 32 bytes (64 hex digits)"},
		{serverLike, `{"active": 1, "keys": [` + k("1", hex32(1)) + `, ` + k("1", hex32(2)) + `]}`, "key id 1 listed twice"},
		{serverLike, `{"active": 3, "keys": [` + k("1", hex32(1)) + `]}`, "active key 3 is not among the keys"},
		{fleetLike, `{"active": 0, "keys": [` + k("0", hex32(1)) + `]}`, "fleet: key id 0 is reserved"},
		{tokenLike, `{"active": 1, "keys": [{"id": 1, "secret": "00ff"}]}`, "auth: key 1: the secret is shorter than 16 bytes"},
		// The secret is read from the format's own field only.
		{tokenLike, `{"active": 1, "keys": [` + k("1", hex32(1)) + `]}`, "shorter than 16 bytes"},
	} {
		if _, err := c.f.Parse([]byte(c.file)); err == nil || !strings.Contains(err.Error(), c.wantText) || !strings.HasPrefix(err.Error(), c.f.Owner+": ") {
			t.Errorf("%s %s: want an error with %q, got %v", c.f.Owner, c.file, c.wantText, err)
		}
	}
	// id 0 is a key id where the format allows it.
	if _, err := serverLike.Parse([]byte(`{"active": 0, "keys": [` + k("0", hex32(1)) + `]}`)); err != nil {
		t.Fatalf("server key id 0: %v", err)
	}
}

func TestLoadChecksModeAndNamesThePath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	if _, err := serverLike.Load(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	set, err := serverLike.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := serverLike.Save(path, set); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602} {
		os.Chmod(path, mode)
		_, err := serverLike.Load(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "0600") || !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Fatalf("mode %04o: want an error naming %s, 0600 and the fix, got %v", mode, path, err)
		}
	}
	os.Chmod(path, 0o400)
	if got, err := serverLike.Load(path); err != nil || got.Active != 1 || !bytes.Equal(got.Keys[0].Secret, set.Keys[0].Secret) {
		t.Fatalf("0400: %+v %v", got, err)
	}
	os.Chmod(path, 0o600)
	os.WriteFile(path, []byte(`{"active": 1, "keys": [{"id": 1, "private": "zz"}]}`), 0o600)
	if _, err := serverLike.Load(path); err == nil || !strings.HasPrefix(err.Error(), "secure: "+path+": ") {
		t.Fatalf("bad file: want an error naming the path, got %v", err)
	}
	if _, err := serverLike.Load(dir); err == nil {
		t.Fatal("a directory loaded as a key file")
	}
}

func TestRotateRetire(t *testing.T) {
	s, err := fleetLike.New(nil)
	if err != nil || s.Active != 1 || len(s.Keys) != 1 || len(s.Keys[0].Secret) != 32 || s.Keys[0].Created != "" {
		t.Fatalf("new: %+v %v", s, err)
	}
	r, err := fleetLike.Rotate(s, nil)
	if err != nil || r.Active != 2 || len(r.Keys) != 2 || bytes.Equal(r.Keys[0].Secret, r.Keys[1].Secret) {
		t.Fatalf("rotate: %+v %v", r, err)
	}
	if len(s.Keys) != 1 {
		t.Fatal("Rotate changed the set it was given")
	}
	if _, err := fleetLike.Retire(r, 2); err == nil || !strings.Contains(err.Error(), "active") {
		t.Fatalf("retired the active key: %v", err)
	}
	if _, err := fleetLike.Retire(r, 7); err == nil || !strings.Contains(err.Error(), "no key 7") {
		t.Fatalf("retired a key not there: %v", err)
	}
	x, err := fleetLike.Retire(r, 1)
	if err != nil || x.Active != 2 || len(x.Keys) != 1 || x.Keys[0].ID != 2 || len(r.Keys) != 2 {
		t.Fatalf("retire: %+v %v (source %+v)", x, err, r)
	}
	// The next id is one past the highest, never a retired id reused.
	y, _ := fleetLike.Rotate(Set{Active: 5, Keys: []Key{{ID: 5, Secret: x.Keys[0].Secret}, {ID: 3, Secret: x.Keys[0].Secret}}}, nil)
	if y.Active != 6 {
		t.Fatalf("next id %d, want 6", y.Active)
	}
	if tk, _ := tokenLike.New(nil); tk.Keys[0].Created == "" || len(tk.Keys[0].Secret) != 32 {
		t.Fatalf("token key: %+v", tk)
	}
}

// TestCreateIsExclusive: Create never replaces a file; LoadOrCreate run by
// several processes at once (workers starting) ends with one key for all.
func TestCreateIsExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "k.json")
	s, created, err := serverLike.LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	if fi, _ := os.Stat(filepath.Dir(path)); fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v", fi.Mode().Perm())
	}
	other, _ := serverLike.New(nil)
	if err := serverLike.Create(path, other); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create over a file: %v", err)
	}
	again, created, err := serverLike.LoadOrCreate(path)
	if err != nil || created || !bytes.Equal(again.Keys[0].Secret, s.Keys[0].Secret) {
		t.Fatalf("second LoadOrCreate: %v %v", created, err)
	}

	race := filepath.Join(t.TempDir(), "race.json")
	var wg sync.WaitGroup
	secrets := make([][]byte, 8)
	creators := make([]bool, 8)
	for i := range secrets {
		wg.Go(func() {
			s, c, err := serverLike.LoadOrCreate(race)
			if err != nil {
				t.Error(err)
				return
			}
			secrets[i], creators[i] = s.Keys[0].Secret, c
		})
	}
	wg.Wait()
	n := 0
	for i := range secrets {
		if !bytes.Equal(secrets[i], secrets[0]) {
			t.Fatalf("racing creators ended with different keys")
		}
		if creators[i] {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d creators, want 1", n)
	}
	assertNoTemp(t, filepath.Dir(race))
}

// TestWriteAtomic: a replace is all or nothing; a refused check leaves the
// old file and no temporary file.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.json")
	if err := WriteAtomic(path, []byte("one"), false, nil); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644) // a replace does not keep a loose mode
	if err := WriteAtomic(path, []byte("two"), false, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "two" {
		t.Fatalf("content %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	refused := errors.New("refused")
	var checked string
	err := WriteAtomic(path, []byte("three"), false, func(tmp string) error {
		if b, _ := os.ReadFile(tmp); string(b) != "three" {
			t.Errorf("check saw %q", b)
		}
		checked = tmp
		return refused
	})
	if !errors.Is(err, refused) || checked == "" || checked == path {
		t.Fatalf("check: %v %q", err, checked)
	}
	if b, _ := os.ReadFile(path); string(b) != "two" {
		t.Fatalf("a refused write changed the file: %q", b)
	}
	assertNoTemp(t, dir)
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}
