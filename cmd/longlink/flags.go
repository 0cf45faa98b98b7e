package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// newFlagSet returns a FlagSet for a subcommand whose usage line names it.
func newFlagSet(name, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.String("config", "", "YAML configuration file; this command reads its section (longlink config print shows the format)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: longlink %s [flags]\n\n%s\n\nFlags (each also settable as LONGLINK_<FLAG>):\n", name, summary)
		printFlags(fs.Output(), fs)
	}
	return fs
}

// printFlags lists a flag set grouped by area: flags sharing a name prefix
// ("shake-", "nats-", …) under one heading, the rest first. Unlike
// flag.PrintDefaults it prints usage text verbatim (PrintDefaults turns the
// first `backquoted` word into the value's placeholder).
func printFlags(w io.Writer, fs *flag.FlagSet) {
	var all []*flag.Flag
	areas := map[string]int{}
	area := func(f *flag.Flag) string { p, _, _ := strings.Cut(f.Name, "-"); return p }
	fs.VisitAll(func(f *flag.Flag) {
		all = append(all, f)
		areas[area(f)]++
	})
	group := func(f *flag.Flag) string {
		if a := area(f); areas[a] > 1 {
			return a
		}
		return ""
	}
	sort.SliceStable(all, func(i, j int) bool { return group(all[i]) < group(all[j]) })
	cur := "-"
	for _, f := range all {
		if g := group(f); g != cur {
			cur = g
			if g != "" {
				fmt.Fprintf(w, "\n %s:\n", g)
			}
		}
		fmt.Fprintf(w, "  -%s", f.Name)
		if name := placeholder(f); name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(f.Usage, "\n", "\n    \t"))
		if !zeroDefault(f) {
			if placeholder(f) == "string" {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			} else {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
		}
		fmt.Fprintln(w)
	}
}

// placeholder names a flag's value by its type ("" for booleans).
func placeholder(f *flag.Flag) string {
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return ""
	}
	name, _ := flag.UnquoteUsage(&flag.Flag{Value: f.Value})
	return name
}

func zeroDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "false", "0s", "[]":
		return true
	}
	return false
}

// wantsHelp reports whether args ask for help before any "--".
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "--h", "-help", "--help":
			return true
		}
	}
	return false
}

// parseFlags applies the --config file's section, then LONGLINK_*
// environment variables, then the command line, which wins. It returns false (after printing why) on error.
// Asking for help prints the usage on stdout and exits 0.
func parseFlags(fs *flag.FlagSet, args []string) bool {
	if wantsHelp(args) {
		fs.SetOutput(os.Stdout)
		fs.Usage()
		os.Exit(0)
	}
	if err := applyConfigFile(fs, args); err != nil {
		fmt.Fprintln(os.Stderr, "longlink:", err)
		return false
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if ignoreEnv {
			return
		}
		key := "LONGLINK_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(key); ok && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s=%q: %v", key, v, err)
			}
		}
	})
	if envErr != nil {
		fmt.Fprintln(os.Stderr, "longlink:", envErr)
		return false
	}
	if captureFlags != nil {
		captureFlags(fs)
		panic(flagsCaptured{})
	}
	return fs.Parse(args) == nil
}
