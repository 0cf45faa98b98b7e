package logic

import "testing"

// ProcCluster exposes the NATS node processes (natsproc_test.go) to the
// external end-to-end tests, which run `longlink logic` on them.
type ProcCluster struct{ c *procCluster }

// StartProcCluster starts n clustered JetStream nodes, each a process.
func StartProcCluster(t *testing.T, n int) ProcCluster { return ProcCluster{startProcCluster(t, n)} }

// URL lists every node's client address.
func (p ProcCluster) URL() string { return p.c.url() }

// Kill sends node i SIGKILL; Start restarts it on its store directory.
func (p ProcCluster) Kill(i int)  { p.c.kill(i) }
func (p ProcCluster) Start(i int) { p.c.start(i) }

// Name is node i's server name.
func (p ProcCluster) Name(i int) string { return p.c.specs[i].Name }

// Stream is node i's own view of a stream (its /jsz).
func (p ProcCluster) Stream(i int, name string) (leader string, last, msgs uint64, ok bool) {
	return p.c.streamState(i, name)
}

// WaitStreams waits until every running node holds stream at one last
// sequence >= min.
func (p ProcCluster) WaitStreams(stream string, min uint64) { p.c.waitStreams(stream, min) }
