package auth

import (
	"fmt"
	"io"
	"os"
)

// ReadSecretFile reads a file holding a secret (keys.json, admin.token),
// refusing one that group or others may read or write, as ssh does with
// private keys: a secret other local users can read is not a secret. The
// mode is checked on the opened file, so a swap between check and read
// cannot slip through. Errors name the path and the fix; a missing file's
// error matches os.ErrNotExist.
func ReadSecretFile(path string) ([]byte, error) {
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
		return nil, fmt.Errorf("secret file %s has mode %04o: group or others may access it; fix with: chmod 600 %s", path, uint32(perm), path)
	}
	return io.ReadAll(f)
}
