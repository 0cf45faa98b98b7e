package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/keyfile"
	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/secure"
)

// fleetFlags are the gateway's fleet options (docs/fleet.md).
type fleetFlags struct {
	on          *bool
	host        *string
	region      *string
	carrier     *string
	advertise   *string
	advertiseWS *string
	table       *string
	keys        *string
	interval    *time.Duration
	ttl         *time.Duration
}

func addFleetFlags(fs *flag.FlagSet) *fleetFlags {
	h, _ := os.Hostname()
	return &fleetFlags{
		on:          fs.Bool("fleet", true, "be part of the fleet of gateway hosts on the NATS this gateway uses: announce this host, serve signed node lists (AUTH_OK, GET /v1/nodes), redirect with GOAWAY 3014 (docs/fleet.md)"),
		host:        fs.String("host-id", fleet.HostID(h), "this host's id in the fleet (letters, digits, '-', '_'; default the host name)"),
		region:      fs.String("region", "", "this host's region tag (node lists prefer hosts of the client's region)"),
		carrier:     fs.String("carrier", "", "this host's carrier tag (then the client's carrier)"),
		advertise:   fs.String("advertise", "", "host:port clients should dial for this host (default the --listen address unless it is a wildcard; without one, node lists never name this host)"),
		advertiseWS: fs.String("advertise-ws", "", "ws:// or wss:// URL browsers should use for this host"),
		table:       fs.String("region-table", "", "file of \"CIDR region [carrier]\" lines: where clients are (the real address, PROXY protocol included)"),
		keys:        fs.String("fleet-keys", "", "fleet signing keys (default <data>/fleet-keys.json, created on first start; `longlink keys --fleet` prints the pins; SIGHUP reloads)"),
		interval:    fs.Duration("fleet-interval", 2*time.Second, "announce this host's state this often (a silent host leaves the view after 3 intervals)"),
		ttl:         fs.Duration("fleet-list-ttl", 5*time.Minute, "clients cache a node list this long"),
	}
}

func (f *fleetFlags) keyFile(dataDir string) string {
	if *f.keys != "" {
		return *f.keys
	}
	return filepath.Join(dataDir, fleet.KeyFile)
}

// prepare creates the key file (top process, before any worker starts).
func (f *fleetFlags) prepare(log *slog.Logger, dataDir string) error {
	if !*f.on {
		return nil
	}
	r, created, err := fleet.LoadOrCreateKeys(f.keyFile(dataDir))
	if err != nil {
		return fmt.Errorf("fleet keys: %w", err)
	}
	if created {
		log.Info("created a fleet signing key; clients pin it (longlink keys --fleet prints it); copy the file to every host, or `longlink keys publish --fleet`", "file", f.keyFile(dataDir), "pin", r.Pins()[0].String())
	}
	return nil
}

// config is the gateway's FleetConfig (nil with --fleet=false or no NATS).
func (f *fleetFlags) config(dataDir, nats string) (*gateway.FleetConfig, error) {
	if !*f.on || nats == "" {
		return nil, nil
	}
	if err := fleet.CheckTag(*f.host); err != nil {
		return nil, fmt.Errorf("--host-id %w", err)
	}
	for name, v := range map[string]string{"--region": *f.region, "--carrier": *f.carrier} {
		if v != "" {
			if err := fleet.CheckTag(v); err != nil {
				return nil, fmt.Errorf("%s %w", name, err)
			}
		}
	}
	if ws := *f.advertiseWS; ws != "" && !strings.HasPrefix(ws, "ws://") && !strings.HasPrefix(ws, "wss://") {
		return nil, fmt.Errorf("--advertise-ws %q: want a ws:// or wss:// URL", ws)
	}
	keys, err := fleet.LoadKeys(f.keyFile(dataDir))
	if err != nil {
		return nil, fmt.Errorf("fleet keys: %w", err)
	}
	fc := &gateway.FleetConfig{Host: *f.host, Region: *f.region, Carrier: *f.carrier, Advertise: *f.advertise,
		AdvertiseWS: *f.advertiseWS, Keys: keys, Interval: *f.interval, Lists: fleet.ListConfig{TTL: *f.ttl}}
	if *f.table != "" {
		if fc.Table, err = fleet.LoadTable(*f.table); err != nil {
			return nil, fmt.Errorf("--region-table: %w", err)
		}
	}
	return fc, nil
}

// reload re-reads the fleet keys (SIGHUP, POST /reload).
func (f *fleetFlags) reload(log *slog.Logger, srv *gateway.Server, dataDir string) {
	if srv.Fleet() == nil {
		return
	}
	r, err := fleet.LoadKeys(f.keyFile(dataDir))
	if err == nil {
		err = srv.ReloadFleetKeys(r)
	}
	if err != nil {
		log.Error("reload: fleet keys not reloaded", "file", f.keyFile(dataDir), "err", err)
	}
}

// adminOverNATS sends admin requests to one host or the whole fleet.
type adminOverNATS struct {
	urls string
	host string // fleet.AdminAll for every host
	auth push.ClientAuth
}

func (a *adminOverNATS) do(method, path string, body any) int {
	nc, err := push.Connect(a.urls, "longlink admin", nil, a.auth.As(push.RoleAdmin))
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink admin:", err)
		return 1
	}
	defer nc.Close()
	var raw json.RawMessage
	if body != nil {
		raw, _ = json.Marshal(body)
	}
	who, _ := os.Hostname()
	if u := os.Getenv("USER"); u != "" {
		who = u + "@" + who
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reps, err := fleet.Ask(ctx, nc, a.host, fleet.AdminRequest{Op: method + " " + path, Body: raw, By: who}, 500*time.Millisecond)
	if err != nil {
		fmt.Fprintln(os.Stderr, "longlink admin:", err)
		return 1
	}
	rc := 0
	for _, r := range reps {
		if !r.OK {
			rc = 1
		}
		line, _ := json.Marshal(r)
		fmt.Println(string(line))
	}
	fmt.Fprintf(os.Stderr, "longlink admin: %d worker(s) answered\n", len(reps))
	return rc
}

// evacuateArgs parses `evacuate --rate N[/s] [--jitter]` or `evacuate stop`.
func evacuateArgs(args []string) (map[string]any, error) {
	if len(args) == 1 && args[0] == "stop" {
		return map[string]any{"stop": true}, nil
	}
	fs := flag.NewFlagSet("evacuate", flag.ContinueOnError)
	rate := fs.String("rate", "", "connections per second for the whole host, e.g. 200/s")
	jitter := fs.Bool("jitter", false, "random reconnect delays inside each 1/rate slot, so the clients spread without bunching")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var n float64
	if _, err := fmt.Sscanf(strings.TrimSuffix(*rate, "/s"), "%g", &n); err != nil || n <= 0 {
		return nil, fmt.Errorf("--rate %q: want a positive number of connections per second (e.g. 200/s)", *rate)
	}
	return map[string]any{"rate": n, "jitter": *jitter}, nil
}

// watchFleetForRouter makes the host's push router forget the users of a
// host as soon as it leaves the fleet view (killed, or cut off), instead of
// after the router's own node timeout.
func watchFleetForRouter(log *slog.Logger, hub *push.Hub, expiry time.Duration) (stop func()) {
	nc, err := push.Connect(hub.NATSURL(), "longlink router fleet watch", log, hub.Auth(push.RoleRouter))
	if err != nil {
		log.Warn("fleet: the router will not follow the fleet view", "err", err)
		return func() {}
	}
	v, unwatch, err := fleet.Watch(nc, expiry)
	if err != nil {
		nc.Close()
		log.Warn("fleet: the router will not follow the fleet view", "err", err)
		return func() {}
	}
	v.OnLeave(func(h fleet.Host) {
		for _, w := range h.Workers {
			hub.Router().ForgetNode(w)
		}
	})
	return func() { unwatch(); nc.Close() }
}

// followFleetKeys (the top process) fetches the key files published to the
// fleet (`longlink keys publish`), checks each with its own loader, writes
// it over the local file and reloads as on SIGHUP. paths maps entry names
// (fleet.KeyToken, ...) to files; an empty path skips that entry.
func followFleetKeys(log *slog.Logger, hub *push.Hub, paths map[string]string) (stop func()) {
	nc, err := push.Connect(hub.NATSURL(), "longlink key follower", log, hub.Auth(push.RoleRouter))
	if err != nil {
		log.Warn("fleet: distributed keys not followed", "err", err)
		return func() {}
	}
	// SIGHUP must never kill us before a handler is in place.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	var started atomic.Bool
	f, err := fleet.FollowKeys(nc, 30*time.Second, log, func(name string, v []byte, rev uint64) {
		if applyDistributedKey(log, paths, name, v, rev) && started.Load() {
			_ = syscall.Kill(os.Getpid(), syscall.SIGHUP) // the same reload as an operator's SIGHUP (supervisor: forwarded to the workers)
		}
	})
	started.Store(true)
	if err != nil {
		nc.Close()
		log.Warn("fleet: distributed keys not followed", "err", err)
		return func() {}
	}
	return func() { f.Stop(); nc.Close() }
}

// applyDistributedKey writes one published key file over the local one if
// it differs and its own loader accepts it; it reports whether it wrote.
func applyDistributedKey(log *slog.Logger, paths map[string]string, name string, v []byte, rev uint64) bool {
	path := paths[name]
	if path == "" {
		return false
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, v) {
		return false // already in force
	}
	// Only what its own loader accepts replaces the file.
	if err := keyfile.WriteAtomic(path, v, false, func(tmp string) error { return checkKeyFile(name, tmp) }); err != nil {
		log.Error("audit: distributed keys refused", "entry", name, "revision", rev, "err", err)
		return false
	}
	log.Info("audit: distributed keys written", "entry", name, "revision", rev, "file", path)
	return true
}

// checkKeyFile loads the key file at path with the loader of entry name
// (fleet.KeyToken, KeyServer, KeyFleet): what is published or written from
// the fleet must be what that loader accepts.
func checkKeyFile(name, path string) error {
	var err error
	switch name {
	case fleet.KeyToken:
		_, err = auth.LoadKeyFile(path)
	case fleet.KeyServer:
		_, err = secure.LoadKeyRing(path)
	case fleet.KeyFleet:
		_, err = fleet.LoadKeys(path)
	default:
		err = fmt.Errorf("unknown entry %q", name)
	}
	return err
}
