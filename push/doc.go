// Package push owns server-to-client notifies across worker processes and
// hosts: the push API (gRPC PushService and NATS ingress subjects), the
// router with its user→node registry fed by presence, the node side that
// each gateway worker runs (its own NATS subject, presence publishing), the
// per-window coalescer, the internal wire formats, and the embedded NATS
// server. The gateway package does the delivery on its event loops
// (gateway/push.go). See docs/push.md for the design and measurements.
//
// Concurrency contract: Router and Hub methods are goroutine-safe. A Node
// calls its Sink on NATS goroutines and never blocks the caller of Online or
// Offline (the event loop). Coalescer.Add is goroutine-safe; Take/Recycle
// belong to one flushing goroutine. Parsed messages (Deliver, Presence)
// alias the bytes they were parsed from.
package push
