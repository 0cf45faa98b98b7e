package keyfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ReadSecret reads a file holding a secret (a key file, admin.token),
// refusing one that group or others may read or write, as ssh does with
// private keys: a secret other local users can read is not a secret. The
// mode is checked on the opened file, so a swap between check and read
// cannot slip through. Errors name the path and the fix; a missing file's
// error matches os.ErrNotExist.
func ReadSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("secret file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secret file %s has mode %04o: group or others may access it (it must be 0600); fix with: chmod 600 %s", path, uint32(perm), path)
	}
	return io.ReadAll(f)
}

// WriteAtomic writes b to path with mode 0600 so that a reader (a gateway
// reloading on SIGHUP, another process loading at start) sees the old file
// or the whole new one, never part of it: a temporary file in the same
// directory, synced, then renamed over path, or with exclusive linked to
// path, failing (matching os.ErrExist) if a file is there. check, if not
// nil, vets the written temporary file first (e.g. its owner's loader); its
// error leaves path untouched. The directory is made (0700) if missing; the
// temporary file never outlives the call.
func WriteAtomic(path string, b []byte, exclusive bool, check func(tmp string) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone once renamed; after a link, the name path keeps
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		err = check(tmp.Name())
	}
	if err != nil {
		return err
	}
	if exclusive {
		return os.Link(tmp.Name(), path)
	}
	return os.Rename(tmp.Name(), path)
}
