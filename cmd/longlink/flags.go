package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// newFlagSet returns a FlagSet for a subcommand whose usage line names it.
func newFlagSet(name, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: longlink %s [flags]\n\n%s\n\nFlags (each also settable as LONGLINK_<FLAG>):\n", name, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags applies LONGLINK_* environment variables as defaults, then the
// command line, which wins. It returns false (after printing why) on error.
func parseFlags(fs *flag.FlagSet, args []string) bool {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
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
	return fs.Parse(args) == nil
}
