// Package chaos holds the shake pipeline chaos test (chaos_test.go): it
// re-executes its test binary as NATS, opener, ledger and gateway processes,
// kills them with SIGKILL at random moments and reconciles the ledger.
package chaos
