package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/longlink/longlink/backend"
)

// presence delivers Online/Offline events to the backend off the event loop.
// Events are sharded by user id over a few goroutines so one user's events
// stay in order; a full shard drops the event (counted and logged), because
// the loop must never block and presence is advisory: the sync protocol, not
// presence, makes delivery lossless.
type presence struct {
	s      *Server
	shards []chan presenceEvent
	wg     sync.WaitGroup
}

type presenceEvent struct {
	online bool
	p      backend.Presence
}

const presenceShards = 4

func newPresence(s *Server) *presence {
	p := &presence{s: s, shards: make([]chan presenceEvent, presenceShards)}
	for i := range p.shards {
		p.shards[i] = make(chan presenceEvent, 4096)
	}
	return p
}

func (p *presence) start() {
	for _, ch := range p.shards {
		p.wg.Add(1)
		go func(ch chan presenceEvent) {
			defer p.wg.Done()
			for ev := range ch {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				var err error
				if ev.online {
					err = p.s.cfg.Backend.Online(ctx, ev.p)
				} else {
					err = p.s.cfg.Backend.Offline(ctx, ev.p)
				}
				cancel()
				if err != nil {
					p.s.connLog.Warn("presence event failed", "uid", ev.p.UID, "online", ev.online, "err", err)
				}
			}
		}(ch)
	}
}

func (p *presence) stop() {
	for _, ch := range p.shards {
		close(ch)
	}
	p.wg.Wait()
}

func (p *presence) online(c *conn)  { p.send(c, true) }
func (p *presence) offline(c *conn) { p.send(c, false) }

func (p *presence) send(c *conn, online bool) {
	p.s.push.presence(c, online)
	ev := presenceEvent{online: online, p: backend.Presence{UID: c.uid, Device: c.device, Node: p.s.cfg.Node, ConnID: c.id}}
	select {
	case p.shards[c.uid%presenceShards] <- ev:
	default:
		p.s.metrics.shed.WithLabelValues("presence_dropped").Inc()
		p.s.connLog.Warn("presence queue full, event dropped", "uid", c.uid, "online", online)
	}
}
