package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/longlink/longlink/auth"
)

const tokenSummary = "mint an access token from the gateway's key file"

func init() { register(command{name: "token", summary: tokenSummary, run: runToken}) }

func runToken(args []string) int {
	fs := newFlagSet("token", tokenSummary)
	uid := fs.Uint64("uid", 0, "user id (required)")
	device := fs.String("device", "", "bind the token to this device id (empty: any device)")
	ttl := fs.Duration("ttl", 24*time.Hour, "token lifetime")
	dataDir := fs.String("data", auth.DefaultDataDir(), "data directory holding keys.json")
	keyFile := fs.String("keys", "", "key file (default <data>/keys.json)")
	create := fs.Bool("create", false, "create a new key file if there is none (normally the gateway creates it on first start)")
	if !parseFlags(fs, args) {
		return 2
	}
	if *uid == 0 {
		fmt.Fprintln(os.Stderr, "longlink token: --uid is required")
		return 2
	}
	path := *keyFile
	if path == "" {
		path = auth.KeyFile(*dataDir)
	}
	// Only the gateway (or an explicit --create) makes keys: a mistyped
	// --data must fail, not mint a token no running gateway accepts.
	var keys *auth.KeySet
	var created bool
	var err error
	if *create {
		keys, created, err = auth.LoadOrCreate(path)
	} else if keys, err = auth.LoadKeyFile(path); errors.Is(err, os.ErrNotExist) {
		err = fmt.Errorf("%w; check --data/--keys, or pass --create to make a new key there", err)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink token:", err)
		return 1
	}
	if created {
		fmt.Fprintln(os.Stderr, "longlink token: created a new development key in", path)
	}
	tok, err := keys.Mint(*uid, *device, time.Now().Add(*ttl))
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink token:", err)
		return 1
	}
	fmt.Println(tok)
	return 0
}
