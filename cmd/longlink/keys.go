package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/secure"
)

const keysSummary = "create or rotate the gateway's server keys (transport encryption) and print the public half clients pin"

func init() { register(command{name: "keys", summary: keysSummary, run: runKeys}) }

// serverKeyFile is the default key file in a data directory.
func serverKeyFile(dataDir string) string { return filepath.Join(dataDir, "server-keys.json") }

func runKeys(args []string) int {
	fs := newFlagSet("keys", keysSummary)
	dataDir := fs.String("data", auth.DefaultDataDir(), "data directory")
	file := fs.String("file", "", "server key file (default <data>/server-keys.json; JSON, mode 0600)")
	rotate := fs.Bool("new", false, "add a new key and make it active; older keys stay loaded for clients that pin them")
	retire := fs.Uint("retire", 0, "remove the key with this id (not the active one)")
	if !parseFlags(fs, args) {
		return 2
	}
	path := *file
	if path == "" {
		path = serverKeyFile(*dataDir)
	}
	keys, active, err := secure.LoadKeys(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			fmt.Fprintln(os.Stderr, "longlink keys:", err)
			return 1
		}
		keys, active, *rotate = nil, 0, true
	case err != nil:
		fmt.Fprintln(os.Stderr, "longlink keys:", err)
		return 1
	}
	changed := false
	if *retire != 0 {
		id := uint32(*retire)
		if id == active {
			fmt.Fprintf(os.Stderr, "longlink keys: key %d is active: rotate first (--new)\n", id)
			return 2
		}
		n := len(keys)
		keys = slices.DeleteFunc(keys, func(k secure.ServerKey) bool { return k.ID == id })
		if len(keys) == n {
			fmt.Fprintf(os.Stderr, "longlink keys: no key %d\n", id)
			return 2
		}
		changed = true
	}
	if *rotate {
		next := uint32(1)
		for _, k := range keys {
			next = max(next, k.ID+1)
		}
		k, err := secure.GenerateKey(next, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, "longlink keys:", err)
			return 1
		}
		keys, active, changed = append(keys, k), k.ID, true
	}
	ring, err := secure.NewKeyRing(keys, active)
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink keys:", err)
		return 1
	}
	if changed {
		if err := secure.SaveKeys(path, keys, active); err != nil {
			fmt.Fprintln(os.Stderr, "longlink keys:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "longlink keys: wrote %s (active key %d); running gateways reload it on SIGHUP\n", path, active)
	}
	// stdout: the pins, active first; a client pins one or more of them.
	for _, p := range ring.Pins() {
		fmt.Println(p)
	}
	return 0
}

// encryptionFlags are the gateway's transport-encryption flags.
type encryptionFlags struct {
	mode *string
	file *string
}

func addEncryptionFlags(fs *flag.FlagSet) *encryptionFlags {
	return &encryptionFlags{
		mode: fs.String("encryption", gateway.EncryptionOptional, "transport encryption: required (plaintext AUTH refused with 4010), optional (HELLO or plaintext) or off"),
		file: fs.String("server-keys", "", "server static keys (default <data>/server-keys.json, created with one key if missing; `longlink keys` rotates them; SIGHUP reloads)"),
	}
}

// apply loads the server keys into cfg (creating the file on first run).
func (e *encryptionFlags) apply(log *slog.Logger, cfg *gateway.Config, dataDir string, quiet bool) error {
	cfg.Encryption = *e.mode
	if *e.mode == gateway.EncryptionOff {
		return nil
	}
	if *e.file == "" {
		*e.file = serverKeyFile(dataDir)
	}
	ring, err := secure.LoadKeyRing(*e.file)
	if errors.Is(err, fs.ErrNotExist) {
		k, gerr := secure.GenerateKey(1, nil)
		if gerr != nil {
			return gerr
		}
		if err = secure.SaveKeys(*e.file, []secure.ServerKey{k}, 1); err == nil {
			ring, err = secure.NewKeyRing([]secure.ServerKey{k}, 1)
			log.Info("created a server key; clients pin it (longlink keys prints it)", "file", *e.file, "pin", k.Pin())
		}
	}
	if err != nil {
		return fmt.Errorf("server keys: %w", err)
	}
	cfg.ServerKeys, cfg.ServerKeysFile = ring, *e.file
	if !quiet {
		log.Info("server keys loaded", "file", *e.file, "active", ring.Active().ID, "ids", ring.IDs(), "encryption", *e.mode)
	}
	return nil
}

// reloadOnHUP reloads the token keys and (unless encryption is off) the
// server keys on SIGHUP, audited in the log; then more (may be nil), e.g. the
// configuration file.
func (e *encryptionFlags) reloadOnHUP(log *slog.Logger, srv *gateway.Server, tokenFile string, more func()) (stop func()) {
	reload := func() {
		if ks, err := auth.LoadKeyFile(tokenFile); err != nil {
			log.Error("reload: token keys not reloaded", "file", tokenFile, "err", err)
		} else {
			_ = srv.ReloadTokenKeys(ks)
		}
		if more != nil {
			more()
		}
		if *e.mode == gateway.EncryptionOff {
			return
		}
		ring, err := secure.LoadKeyRing(*e.file)
		if err == nil {
			err = srv.ReloadServerKeys(ring)
		}
		if err != nil {
			log.Error("reload: server keys not reloaded", "file", *e.file, "err", err)
		}
	}
	srv.SetReloader(reload) // POST /reload on the admin port does the same
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ch:
				log.Info("audit: SIGHUP: reloading")
				reload()
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
