package main

import (
	"github.com/longlink/longlink/loadtest"
)

const loadtestSummary = "open, hold and drive N connections against a gateway (or the host's epoll floor) and report"

func init() {
	register(command{name: "loadtest", summary: loadtestSummary, run: runLoadtest})
}

func runLoadtest(args []string) int {
	if loadtest.IsChild() {
		// A worker process started by the supervisor below.
		return loadtest.ChildMain()
	}
	cfg := loadtest.DefaultConfig()
	fs := newFlagSet("loadtest", loadtestSummary+". See docs/loadtest.md.")
	cfg.Bind(fs)
	if !parseFlags(fs, args) {
		return 2
	}
	return loadtest.Main(cfg)
}
