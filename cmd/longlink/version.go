package main

import (
	"fmt"
	"runtime"

	"github.com/longlink/longlink/internal/buildinfo"
)

func init() {
	register(command{name: "version", summary: "print the version", run: func([]string) int {
		fmt.Printf("longlink %s (%s, %s/%s)\n", buildinfo.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}, noFlags: true})
}
