package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/longlink/longlink/gateway"
)

// The configuration file is YAML (chosen over TOML: already a dependency for
// shake budgets, comments, and line numbers for every value through
// yaml.Node). One top-level section per subcommand, named as on the command
// line ("gateway", "logic", "shake opener"); inside, the flag names without
// dashes in front, each with its flag's value syntax:
//
//	gateway:
//	  listen: ":7100"
//	  workers: 2
//	  heartbeat: 30s
//
// Precedence, lowest first: the flag's default, the file, LONGLINK_<FLAG>
// environment variables, the command line.

const configSummary = "the configuration file: print the effective configuration, check a file"

func init() {
	register(command{name: "config", summary: configSummary, run: runConfig, noFlags: true})
}

const configUsage = `Usage: longlink config <command> [args]

Commands:
  print [--config FILE] [section ...]   the effective configuration (defaults, then FILE,
                                        then LONGLINK_* variables) as YAML, every flag of every
                                        subcommand, or only the sections named
  check FILE|-                          check a file: unknown sections or keys and bad values
                                        are reported with their line numbers (exit 1)

A subcommand reads its section with --config FILE (or LONGLINK_CONFIG=FILE).
`

// captureFlags, when set, makes parseFlags hand over the flag set (with the
// file and environment applied) instead of letting the command run: this is
// how `config` learns every subcommand's flags without a second registry.
var captureFlags func(fs *flag.FlagSet)

type flagsCaptured struct{}

// section is one subcommand that takes flags.
type section struct {
	name string
	run  func() int
}

func configSections() []section {
	var out []section
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if !c.noFlags {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if n == "shake" {
			for _, sc := range shakeCommands {
				out = append(out, section{"shake " + sc.name, func() int { return sc.run(nil) }})
			}
			continue
		}
		c := commands[n]
		out = append(out, section{n, func() int { return c.run(nil) }})
	}
	return out
}

// flagSetOf runs a section's command only up to its parseFlags.
func flagSetOf(s section) (fs *flag.FlagSet, err error) {
	captureFlags = func(f *flag.FlagSet) { fs = f }
	defer func() {
		captureFlags = nil
		if r := recover(); r != nil {
			if _, ok := r.(flagsCaptured); !ok {
				panic(r)
			}
		}
		if fs == nil && err == nil {
			err = fmt.Errorf("%s: parses no flags", s.name)
		}
	}()
	s.run()
	return fs, err
}

func runConfig(args []string) int {
	if len(args) == 0 || wantsHelp(args[:1]) {
		fmt.Print(configUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "print":
		rest := args[1:]
		if len(rest) >= 2 && (rest[0] == "--config" || rest[0] == "-config") {
			os.Setenv("LONGLINK_CONFIG", rest[1])
			rest = rest[2:]
		}
		if err := printConfig(os.Stdout, strings.Join(rest, " ")); err != nil {
			fmt.Fprintln(os.Stderr, "longlink config:", err)
			return 1
		}
		return 0
	case "check":
		if len(args) != 2 {
			fmt.Fprint(os.Stderr, configUsage)
			return 2
		}
		var raw []byte
		var err error
		if args[1] == "-" {
			raw, err = io.ReadAll(os.Stdin)
		} else {
			raw, err = os.ReadFile(args[1])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "longlink config:", err)
			return 1
		}
		if errs := checkConfig(raw); len(errs) > 0 {
			for _, e := range errs {
				fmt.Fprintf(os.Stderr, "%s:%v\n", args[1], e)
			}
			return 1
		}
		fmt.Printf("%s: ok\n", args[1])
		return 0
	}
	fmt.Fprintf(os.Stderr, "longlink config: unknown command %q\n\n%s", args[0], configUsage)
	return 2
}

// printConfig writes the effective configuration of the named sections
// (all of them if only is empty) as YAML.
func printConfig(w io.Writer, only string) error {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	found := false
	for _, s := range configSections() {
		if only != "" && s.name != only {
			continue
		}
		found = true
		fs, err := flagSetOf(s)
		if err != nil {
			return err
		}
		m := &yaml.Node{Kind: yaml.MappingNode}
		fs.VisitAll(func(f *flag.Flag) {
			if f.Name == "config" || f.Name == "worker-index" {
				return
			}
			v := &yaml.Node{Kind: yaml.ScalarNode, Value: f.Value.String()}
			if placeholder(f) == "string" || placeholder(f) == "value" {
				v.Tag = "!!str" // quoted where YAML would read another type
			}
			k := &yaml.Node{Kind: yaml.ScalarNode, Value: f.Name, LineComment: firstLine(f.Usage)}
			m.Content = append(m.Content, k, v)
		})
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: s.name}, m)
	}
	if !found {
		return fmt.Errorf("no section %q", only)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	return enc.Close()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 100 {
		s = s[:97] + "..."
	}
	return s
}

// lineError is a configuration error at a line of the file.
type lineError struct {
	line int
	msg  string
}

func (e lineError) Error() string { return fmt.Sprintf("%d: %s", e.line, e.msg) }

// parseConfig decodes a file into its sections' mapping nodes.
func parseConfig(raw []byte) (map[string]*yaml.Node, []*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, nil, err
	}
	out := map[string]*yaml.Node{}
	if len(doc.Content) == 0 {
		return out, nil, nil
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, nil, lineError{top.Line, "the file must be a mapping of sections (gateway:, logic:, …)"}
	}
	var keys []*yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		keys = append(keys, top.Content[i])
		out[top.Content[i].Value] = top.Content[i+1]
	}
	return out, keys, nil
}

// applySection sets fs's flags from a section node, collecting every error.
func applySection(fs *flag.FlagSet, n *yaml.Node) []error {
	if n.Kind != yaml.MappingNode {
		if n.Tag == "!!null" {
			return nil
		}
		return []error{lineError{n.Line, "section " + fs.Name() + " must be a mapping of flag: value"}}
	}
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f := fs.Lookup(k.Value)
		switch {
		case f == nil || k.Value == "config":
			errs = append(errs, lineError{k.Line, fmt.Sprintf("%s: unknown key %q (longlink %s -h lists the flags)", fs.Name(), k.Value, fs.Name())})
		case v.Kind != yaml.ScalarNode:
			errs = append(errs, lineError{v.Line, fmt.Sprintf("%s.%s: want a single value", fs.Name(), k.Value)})
		case v.Value == "" && placeholder(f) != "string":
			// Empty: the flag's own default (what print shows for a
			// default that only the command computes).
		default:
			if err := f.Value.Set(v.Value); err != nil {
				errs = append(errs, lineError{v.Line, fmt.Sprintf("%s.%s: %q: %v", fs.Name(), k.Value, v.Value, err)})
			}
		}
	}
	return errs
}

// checkConfig validates every section of a file against the subcommands'
// flags, without running anything.
func checkConfig(raw []byte) []error {
	secs, keys, err := parseConfig(raw)
	if err != nil {
		return []error{err}
	}
	known := map[string]section{}
	for _, s := range configSections() {
		known[s.name] = s
	}
	var errs []error
	for _, k := range keys {
		s, ok := known[k.Value]
		if !ok {
			errs = append(errs, lineError{k.Line, fmt.Sprintf("unknown section %q", k.Value)})
			continue
		}
		// A fresh flag set with defaults only: the environment must not
		// hide a bad value in the file.
		saved := os.Getenv("LONGLINK_CONFIG")
		os.Unsetenv("LONGLINK_CONFIG")
		fs, err := withoutEnv(func() (*flag.FlagSet, error) { return flagSetOf(s) })
		if saved != "" {
			os.Setenv("LONGLINK_CONFIG", saved)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, applySection(fs, secs[k.Value])...)
	}
	return errs
}

// ignoreEnv makes parseFlags skip LONGLINK_* variables (config check).
var ignoreEnv bool

func withoutEnv(fn func() (*flag.FlagSet, error)) (*flag.FlagSet, error) {
	ignoreEnv = true
	defer func() { ignoreEnv = false }()
	return fn()
}

// applyConfigFile sets fs's flags from its section of the file named by
// --config in args or LONGLINK_CONFIG.
func applyConfigFile(fs *flag.FlagSet, args []string) error {
	path := os.Getenv("LONGLINK_CONFIG")
	for i, a := range args {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(strings.TrimLeft(a, "-"), "config="); ok && strings.HasPrefix(a, "-") {
			path = v
		} else if (a == "-config" || a == "--config") && i+1 < len(args) {
			path = args[i+1]
		}
	}
	if path == "" {
		return nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	secs, _, err := parseConfig(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	n := secs[fs.Name()]
	if n == nil {
		return nil
	}
	if errs := applySection(fs, n); len(errs) > 0 {
		return fmt.Errorf("%s:%w", path, errors.Join(errs...))
	}
	return nil
}

// runtimeSettings are the gateway flags a reload applies without a restart
// (as runtime switches); every other changed setting is reported as needing
// one. Keys (token and server) reload on SIGHUP too (keys.go).
var runtimeSettings = map[string]func(sw *gateway.Switches, fs *flag.FlagSet){
	"accept-rate": func(sw *gateway.Switches, fs *flag.FlagSet) {
		sw.AcceptRate = fs.Lookup("accept-rate").Value.(flag.Getter).Get().(float64)
	},
	"max-conns": func(sw *gateway.Switches, fs *flag.FlagSet) {
		sw.MaxConns = fs.Lookup("max-conns").Value.(flag.Getter).Get().(int)
	},
}

// reloadGatewayConfig re-reads the configuration (file, environment, then
// the command line as at start) on SIGHUP: the runtime settings that changed
// are applied as switches (audited like any switch change); the others are
// logged as needing a restart.
// parsed holds the settings as parsed at start (snapshotFlags), before the
// command filled in derived defaults.
func reloadGatewayConfig(log *slog.Logger, srv *gateway.Server, parsed map[string]string, args []string) {
	fresh, err := flagSetOf(section{"gateway", func() int { return commands["gateway"].run(args) }})
	if err == nil {
		fresh.SetOutput(io.Discard)
		err = fresh.Parse(args)
	}
	if err != nil {
		log.Error("reload: configuration not reloaded", "err", err)
		return
	}
	sw, changed := srv.Switches(), false
	fresh.VisitAll(func(f *flag.Flag) {
		old, ok := parsed[f.Name]
		if !ok || old == f.Value.String() {
			return
		}
		if apply, ok := runtimeSettings[f.Name]; ok {
			apply(&sw, fresh)
			changed = true
			parsed[f.Name] = f.Value.String()
			return
		}
		log.Warn("reload: setting changed in the configuration, applied at the next restart", "setting", f.Name, "running", old, "configured", f.Value.String())
	})
	if changed {
		if err := srv.SetSwitches(sw, "reload (configuration file)"); err != nil {
			log.Error("reload: configuration not applied", "err", err)
		}
	}
}

// snapshotFlags records every flag's value as parsed.
func snapshotFlags(fs *flag.FlagSet) map[string]string {
	out := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { out[f.Name] = f.Value.String() })
	return out
}
