// Package fleet makes many gateway hosts one service: every gateway worker
// announces its host's state over NATS (Announcement), every worker keeps
// the fleet view (View) and builds from it the signed nearest-node lists
// (Lists) that clients get in AUTH_OK, CONFIG, GOAWAY 3014 and
// GET /v1/nodes. Admin requests to one host or the whole fleet travel over
// NATS request/reply (admin role only). docs/fleet.md describes the rules.
//
// Fleet state is soft state on core NATS, not a JetStream KV bucket: each
// worker publishes its state every Interval and a receiver forgets a worker
// it has not heard from for Expiry. A dead host therefore drops out after
// Expiry by construction, with no purge timer or consumer to keep, and the
// same code works on a NATS cluster without JetStream. A new process learns
// the whole fleet within one Interval.
package fleet
