package auth

import (
	"os"
	"path/filepath"
)

// DefaultDataDir is where longlink keeps its state when --data is not given:
// $XDG_DATA_HOME/longlink, else ~/.local/share/longlink, else ./data. Every
// subcommand (gateway, token, loadtest) agrees on it, so a token minted or a
// load run started from any directory matches the gateway's dev key.
func DefaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "longlink")
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".local", "share", "longlink")
	}
	return "data"
}

// KeyFile returns the token key file's path inside a data directory.
func KeyFile(dataDir string) string { return filepath.Join(dataDir, "keys.json") }
