// Package loadtest owns `longlink loadtest`, the bundled load tool: it opens
// up to millions of authenticated connections against a gateway (or against
// its own minimal epoll "floor" server), drives scenarios over them (idle with
// heartbeats, heartbeat storm, rpc, reconnect storm, slow consumer, push,
// shake, open, overload), over TCP or WebSocket (--ws), measures them with HDR histograms, reads the
// gateway's memory and CPU from its admin /metrics, and writes a human
// summary, a JSON report and a self-contained HTML page.
//
// Process model. One process can open only ~19,000 files here, so the
// command is a supervisor: it re-executes its own binary as worker processes
// (marked by the LONGLINK_LOADTEST_CHILD environment variable), sends each a
// JSON spec on stdin followed by command lines ("reconnect", "push", "stop"),
// and reads one JSON stats line per second from each worker's stdout. Workers
// die with their parent (Pdeathsig, and stdin EOF), live in their own process
// group, and are killed on SIGINT, on error and at the end of the run.
//
// Client workers do not use a goroutine per connection: each runs one raw
// epoll loop (golang.org/x/sys/unix) over a flat slice of small per-connection
// structs, binds every socket to a source address from --sources before
// connecting (IP_BIND_ADDRESS_NO_PORT, so ports are chosen per 4-tuple), and
// schedules heartbeats, calls and timeouts with sweeping cursors instead of
// per-connection timers.
//
// The floor server (--floor, --compare-floor) is the same kind of epoll loop
// with no protocol and no state: accept, echo what is read, and write 16
// bytes to every connection on demand. Run against it, the tool measures what
// the host itself costs per accept, per echo, per pushed write and per
// connection, so gateway figures can be given as ratios to it.
//
// Scenarios are registered in a table (scenario.go); adding one is one file
// with a worker-side hook and, if it needs the parent to drive it, a
// parent-side hook.
package loadtest
