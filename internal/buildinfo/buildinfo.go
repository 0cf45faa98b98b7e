// Package buildinfo holds the version stamped into the binary at build time.
package buildinfo

// Version is set with -ldflags "-X github.com/longlink/longlink/internal/buildinfo.Version=…".
var Version = "dev"
