package auth

import "github.com/longlink/longlink/internal/keyfile"

// ReadSecretFile reads a file holding a secret (keys.json, admin.token),
// refusing one that group or others may read or write, as ssh does with
// private keys: a secret other local users can read is not a secret. The
// mode is checked on the opened file, so a swap between check and read
// cannot slip through. Errors name the path and the fix; a missing file's
// error matches os.ErrNotExist.
func ReadSecretFile(path string) ([]byte, error) { return keyfile.ReadSecret(path) }
