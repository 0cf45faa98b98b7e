// Package fleete2e holds the fleet's end-to-end tests on the multi-host
// test bed (internal/testbed): three gateway hosts (--workers 2), a 3-node
// `longlink nats` cluster (one node on each of them), two `longlink logic`
// instances on a replicated store, and clients in a client namespace
// spread by signed node lists. The tests are in fleet_test.go; the package
// has no code of its own (docs/fleet.md, "Test bed").
package fleete2e
