// Package offline reaches devices that have no live connection through
// their platform's push service (APNs, FCM, HMS): the "offline
// notification" half of push (docs/push.md, "Offline notification").
//
//   - Registrations (devices.go, backend.go): a client registers its push
//     token with the method device.register (long connection or HTTP); the
//     gateway worker serves it as a backend decorator, bound to the
//     authenticated user and device, and writes it to the JetStream KV
//     bucket LONGLINK_DEVICES (write-only for the gateway role). Senders and
//     the router's enqueuer keep an in-memory mirror of the bucket (a KV
//     watch).
//   - The queue (queue.go): the router's hook (push.OfflineHook) publishes
//     each notify for a user with registered devices to the stream
//     LONGLINK_OFFLINE, one subject per (user, type[, device]) with one
//     message kept per subject: the stream itself collapses a storm to its
//     newest version.
//   - The sender (sender.go): a durable pull consumer that waits out the
//     delay, asks which devices are connected (push.Router.Devices), and
//     sends one provider request per registered device that is not — at
//     most once per device across a crash (the message is acknowledged
//     before the requests).
//
// Concurrency: Devices, Enqueuer and Sender are goroutine-safe; the hook
// never blocks (a full queue drops, counted).
package offline
