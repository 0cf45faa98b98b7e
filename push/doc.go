// Package push owns server-to-client notifies across worker processes and
// hosts: the push API (gRPC PushService and NATS ingress subjects), the
// router with its user→node registry fed by presence, the node side that
// each gateway worker runs (its own NATS subject, presence publishing), the
// per-window coalescer, the internal wire formats, and the embedded NATS
// server. The gateway package does the delivery on its event loops
// (gateway/push.go). See docs/push.md for the design and measurements.
//
// It also owns trust and resilience on the internal bus: the NATS roles and
// their permissions (auth.go: every connection names a role, passwords
// derive from the host secret), PushService's bearer tokens and health
// service (grpcauth.go), the embedded server's log routed to slog
// (natslog.go), and the hub's readiness (Hub.Ready: NATS link, JetStream
// write probe, recovery of a JetStream stuck on a write error).
//
// Concurrency contract: Router and Hub methods are goroutine-safe. A Node
// calls its Sink on NATS goroutines and never blocks the caller of Online or
// Offline (the event loop). Coalescer.Add is goroutine-safe; Take/Recycle
// belong to one flushing goroutine. Parsed messages (Deliver, Presence)
// alias the bytes they were parsed from.
package push
