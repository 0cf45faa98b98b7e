// Package shake owns the offline side of shake red packets: the budget model
// and its validation, splitting money into packets, the encrypted ticket and
// its 18-byte record, the key store, the memory-mappable ticket file format,
// splitting files per gateway instance with backups, verification of
// generated files, and reconciliation of an opened-packets ledger against
// them. Part 2 (the gateway) builds on File, Dispenser and Checker.
//
// Concurrency: Plan, KeyStore and Checker are immutable after construction
// and safe for concurrent use; File is safe for concurrent reads; Dispenser.Next
// is goroutine-safe (an atomic cursor). Generate, Verify, Split and Reconcile
// run their own worker goroutines and return when all of them are done.
//
// Money is always an integer number of fen (0.01 yuan); see Money.
package shake
