// Command longlink is the one binary of the longlink access gateway. Each
// subcommand lives in its own file and registers itself in init; main only
// dispatches.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// command is one subcommand. run gets the arguments after the subcommand's
// name and returns the process exit code.
type command struct {
	name    string
	summary string
	run     func(args []string) int
	noFlags bool // takes no flag set (help, version, …): not a config section
}

var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

func usage() {
	fmt.Fprintf(os.Stderr, "longlink — access-layer gateway for instant messaging\n\nUsage: longlink <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'longlink <command> -h' for a command's flags. Every flag can also be set\nwith an environment variable LONGLINK_<FLAG> (dashes become underscores).\n")
}

func init() {
	register(command{name: "help", summary: "show this help", run: func([]string) int { usage(); return 0 }, noFlags: true})
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := strings.TrimLeft(os.Args[1], "-")
	if name == "h" {
		name = "help"
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "longlink: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	os.Exit(c.run(os.Args[2:]))
}
