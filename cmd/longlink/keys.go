package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/secure"
)

const keysSummary = "create or rotate the server keys (transport encryption; --fleet: the node-list signing keys) and print the pins clients hold; `keys publish` sends key files to every fleet host"

func init() { register(command{name: "keys", summary: keysSummary, run: runKeys}) }

// serverKeyFile is the default key file in a data directory.
func serverKeyFile(dataDir string) string { return filepath.Join(dataDir, "server-keys.json") }

func runKeys(args []string) int {
	if len(args) > 0 && args[0] == "publish" {
		return runKeysPublish(args[1:])
	}
	fs := newFlagSet("keys", keysSummary)
	dataDir := fs.String("data", auth.DefaultDataDir(), "data directory")
	file := fs.String("file", "", "server key file (default <data>/server-keys.json; JSON, mode 0600)")
	rotate := fs.Bool("new", false, "add a new key and make it active; older keys stay loaded for clients that pin them")
	retire := fs.Uint("retire", 0, "remove the key with this id (not the active one)")
	fleetKeys := fs.Bool("fleet", false, "the fleet's node-list signing keys (<data>/fleet-keys.json) instead of the server keys; pins print as <id>:<64 hex>, active first")
	if !parseFlags(fs, args) {
		return 2
	}
	if *fleetKeys {
		return runFleetKeys(*dataDir, *file, *rotate, uint32(*retire))
	}
	path := *file
	if path == "" {
		path = serverKeyFile(*dataDir)
	}
	return editKeys(path, *rotate, uint32(*retire), secure.LoadOrCreateKeyRing, secure.SaveKeyRing,
		func(r *secure.KeyRing) (uint32, []string) { return r.Active().ID, r.Pins() },
		"key", "running gateways reload it on SIGHUP")
}

// editKeys is `longlink keys [--fleet]` on one key file: load it (created
// with one key if missing), retire a key, rotate (unless just created), save
// it if changed, and print the pins, active first (stdout: a client pins one
// or more of them). what names the active key and hint ends the line that
// says the file was written.
func editKeys[R interface {
	Rotate() (R, error)
	Retire(id uint32) (R, error)
}](path string, rotate bool, retire uint32, loadOrCreate func(string) (R, bool, error), save func(string, R) error, show func(R) (active uint32, pins []string), what, hint string) int {
	ring, created, err := loadOrCreate(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink keys:", err)
		return 1
	}
	changed := created
	if retire != 0 {
		if ring, err = ring.Retire(retire); err != nil {
			fmt.Fprintln(os.Stderr, "longlink keys:", err)
			return 2
		}
		changed = true
	}
	if rotate && !created {
		if ring, err = ring.Rotate(); err != nil {
			fmt.Fprintln(os.Stderr, "longlink keys:", err)
			return 1
		}
		changed = true
	}
	if changed && !created { // a created file is already saved
		if err := save(path, ring); err != nil {
			fmt.Fprintln(os.Stderr, "longlink keys:", err)
			return 1
		}
	}
	active, pins := show(ring)
	if changed {
		fmt.Fprintf(os.Stderr, "longlink keys: wrote %s (active %s %d); %s\n", path, what, active, hint)
	}
	for _, p := range pins {
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
	ring, created, err := secure.LoadOrCreateKeyRing(*e.file)
	if err != nil {
		return fmt.Errorf("server keys: %w", err)
	}
	if created {
		log.Info("created a server key; clients pin it (longlink keys prints it)", "file", *e.file, "pin", ring.Pins()[0])
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

// runFleetKeys is `longlink keys --fleet`: create, rotate or retire the
// fleet signing keys and print their pins, active first.
func runFleetKeys(dataDir, file string, rotate bool, retire uint32) int {
	path := file
	if path == "" {
		path = filepath.Join(dataDir, fleet.KeyFile)
	}
	return editKeys(path, rotate, retire, fleet.LoadOrCreateKeys, fleet.SaveKeys,
		func(r *fleet.KeyRing) (uint32, []string) { return r.Active(), pinStrings(r.Pins()) },
		"fleet key", "running gateways reload it on SIGHUP (or publish it: longlink keys publish)")
}

func pinStrings(pins []fleet.Pin) []string {
	out := make([]string, len(pins))
	for i, p := range pins {
		out[i] = p.String()
	}
	return out
}

// runKeysPublish is `longlink keys publish`: the key files of this data
// directory go to the fleet's KV bucket (as the NATS admin role); every
// host's gateway writes them over its own and reloads (docs/fleet.md).
func runKeysPublish(args []string) int {
	fs := newFlagSet("keys publish", "publish key files to every fleet host through NATS")
	dataDir := fs.String("data", auth.DefaultDataDir(), "data directory holding the key files")
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS URLs of the fleet's cluster")
	replicas := fs.Int("replicas", 1, "replicas of the keys bucket when this creates it (3 on a 3-node cluster)")
	tok := fs.Bool("token", false, "publish the token keys (<data>/keys.json)")
	srvOn := fs.Bool("server-keys", false, "publish the server keys (<data>/server-keys.json, or --server-keys-file)")
	srv := fs.String("server-keys-file", "", "the server key file to publish")
	flt := fs.Bool("fleet", false, "publish the fleet signing keys (<data>/fleet-keys.json)")
	na := addNATSAuthFlags(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	all := !*tok && !*srvOn && !*flt && *srv == ""
	files := map[string]string{}
	if *tok || all {
		files[fleet.KeyToken] = auth.KeyFile(*dataDir)
	}
	if *srvOn || *srv != "" || all {
		files[fleet.KeyServer] = serverKeyFile(*dataDir)
		if *srv != "" {
			files[fleet.KeyServer] = *srv
		}
	}
	if *flt || all {
		files[fleet.KeyFleet] = filepath.Join(*dataDir, fleet.KeyFile)
	}
	entries := map[string][]byte{}
	for name, path := range files {
		err := checkKeyFile(name, path) // publish only what its own loader accepts
		if errors.Is(err, os.ErrNotExist) && all {
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "longlink keys publish: %s: %v\n", path, err)
			return 1
		}
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "longlink keys publish:", err)
			return 1
		}
		entries[name] = b
	}
	if len(entries) == 0 {
		fmt.Fprintln(os.Stderr, "longlink keys publish: no key file to publish")
		return 2
	}
	ca, err := na.resolve(*natsURL, *dataDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink keys publish:", err)
		return 2
	}
	nc, err := push.Connect(*natsURL, "longlink keys publish", nil, ca.As(push.RoleAdmin))
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink keys publish:", err)
		return 1
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	revs, err := fleet.PublishKeys(ctx, nc, *replicas, entries)
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink keys publish:", err)
		return 1
	}
	for _, name := range fleet.KeyNames {
		if rev, ok := revs[name]; ok {
			fmt.Printf("%s revision %d\n", name, rev)
		}
	}
	fmt.Fprintln(os.Stderr, "longlink keys publish: every fleet host writes them and reloads within seconds (see each host's audit lines)")
	return 0
}
