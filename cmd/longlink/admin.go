package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/fleet"
)

const adminSummary = "read and set a running gateway's switches (degrade, quotas, policies, shake, drain)"

func init() { register(command{name: "admin", summary: adminSummary, run: runAdmin}) }

const adminUsage = `Usage: longlink admin [flags] <command> [args]

Commands:
  status                      connections, calls/s, errors (no token needed)
  switches                    show the switches in force
  set key=value ...           change switches, e.g. degrade=2 degrade_share=30 auto_degrade=true
                              accept_rate=5000 max_conns=19000 redirect=10.0.0.9:7100
                              shake_off=true shake_speed=1.5 shake_limit=20000
  policy [scale]              show the heartbeat policy, or multiply it by scale
  shake <switch> [json]       shake switches: status, speed {"speed":2}, limit {"per_s":5000},
                              degrade {"min_interval_ms":5000,"probability_permille":200},
                              down {"instance":3,"down":true}, keys {"allow":[..],"deny":[..]}
  drain N                     drain and restart worker N (with --workers)
  evacuate --rate N/s [--jitter]  empty this host at N connections/s (GOAWAY 3014 with
                              node lists without it; unlisted until "evacuate stop" or a restart)
  evacuate stop               end an evacuation: the host is listed again
  fleet                       the fleet view as this host sees it
  lists                       send every client its fresh node list (CONFIG) now

With --host ID (one host) or --fleet (every host) the command goes over NATS
(--nats, as the NATS admin role) instead of to --admin; every worker answers
with one JSON line and writes its own audit line.

Every change is applied at once and logged as an audit line by the gateway;
switches and policy persist across restarts (an evacuation does not). The admin token is read from <data>/admin.token.
`

func runAdmin(args []string) int {
	fs := newFlagSet("admin", adminSummary)
	fs.Usage = func() { fmt.Fprint(fs.Output(), adminUsage, "\nFlags:\n"); printFlags(fs.Output(), fs) }
	addr := fs.String("admin", "127.0.0.1:7101", "the gateway's admin address")
	dataDir := fs.String("data", auth.DefaultDataDir(), "data directory holding admin.token")
	tokenFile := fs.String("token-file", "", "admin token file (default <data>/admin.token)")
	host := fs.String("host", "", "send the command to this fleet host over NATS")
	all := fs.Bool("fleet", false, "send the command to every fleet host over NATS")
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS URLs for --host and --fleet")
	na := addNATSAuthFlags(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	if *tokenFile == "" {
		*tokenFile = filepath.Join(*dataDir, "admin.token")
	}
	tok := ""
	if raw, err := auth.ReadSecretFile(*tokenFile); err == nil {
		tok = strings.TrimSpace(string(raw))
	} else if !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "longlink admin:", err) // e.g. readable by others: refuse to use it
		return 1
	}
	base := "http://" + *addr
	do := func(method, path string, body any) int {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "longlink admin:", err)
			return 1
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		var pretty bytes.Buffer
		if json.Indent(&pretty, out, "", "  ") == nil {
			out = append(pretty.Bytes(), '\n')
		}
		if resp.StatusCode != http.StatusOK {
			fmt.Fprintf(os.Stderr, "longlink admin: %s: %s", resp.Status, out)
			return 1
		}
		os.Stdout.Write(out)
		return 0
	}
	if *host != "" || *all {
		if *host != "" && *all {
			fmt.Fprintln(os.Stderr, "longlink admin: --host or --fleet, not both")
			return 2
		}
		ca, err := na.resolve(*natsURL, *dataDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "longlink admin:", err)
			return 2
		}
		a := &adminOverNATS{urls: *natsURL, host: *host, auth: ca}
		if *all {
			a.host = fleet.AdminAll
		}
		do = a.do
	}
	switch rest[0] {
	case "evacuate":
		body, err := evacuateArgs(rest[1:])
		if err != nil {
			fmt.Fprintln(os.Stderr, "longlink admin evacuate:", err)
			return 2
		}
		if *all && body["stop"] == nil {
			fmt.Fprintln(os.Stderr, "longlink admin evacuate: not the whole fleet at once (its clients would have nowhere to go); one --host at a time")
			return 2
		}
		return do("POST", "/fleet/evacuate", body)
	case "fleet":
		return do("GET", "/fleet", nil)
	case "lists":
		return do("POST", "/fleet/lists", nil)
	case "status":
		return do("GET", "/status?format=json", nil)
	case "switches":
		return do("GET", "/switches", nil)
	case "set":
		if len(rest) < 2 {
			fmt.Fprintln(os.Stderr, "longlink admin set: give key=value pairs")
			return 2
		}
		m := map[string]any{}
		for _, kv := range rest[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				fmt.Fprintf(os.Stderr, "longlink admin set: %q is not key=value\n", kv)
				return 2
			}
			var val any
			if json.Unmarshal([]byte(v), &val) != nil {
				val = v // a bare string
			}
			m[k] = val
		}
		return do("PUT", "/switches", m)
	case "policy":
		if len(rest) == 1 {
			return do("GET", "/heartbeat/policy", nil)
		}
		f, err := strconv.ParseFloat(rest[1], 64)
		if err != nil || f <= 0 {
			fmt.Fprintln(os.Stderr, "longlink admin policy: scale must be a positive number")
			return 2
		}
		return do("PUT", "/heartbeat/policy", map[string]float64{"scale": f})
	case "shake":
		if len(rest) < 2 {
			fmt.Fprintln(os.Stderr, "longlink admin shake: give a switch (status, speed, limit, degrade, down, keys)")
			return 2
		}
		if rest[1] == "status" {
			return do("GET", "/shake/status", nil)
		}
		var body any = map[string]any{}
		if len(rest) > 2 {
			if err := json.Unmarshal([]byte(rest[2]), &body); err != nil {
				fmt.Fprintln(os.Stderr, "longlink admin shake: the argument must be JSON:", err)
				return 2
			}
		}
		return do("POST", "/shake/"+rest[1], body)
	case "drain":
		if len(rest) < 2 {
			fmt.Fprintln(os.Stderr, "longlink admin drain: give a worker index")
			return 2
		}
		return do("POST", "/workers/"+rest[1]+"/drain", nil)
	}
	fmt.Fprintf(os.Stderr, "longlink admin: unknown command %q\n\n%s", rest[0], adminUsage)
	return 2
}
