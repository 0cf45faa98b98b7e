package gateway

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// goAwayFrame encodes a GOAWAY asking the client to reconnect after a
// jittered delay of up to one second.
func (s *Server) goAwayFrame() []byte {
	body, _ := proto.Marshal(&pb.GoAway{
		Code:             uint32(codec.CodeShutdown),
		ReconnectAfterMs: uint32(rand.IntN(1000)),
		Message:          "server draining",
	})
	return codec.AppendFrame(nil, codec.CmdGoAway, 0, 0, body)
}

// Shutdown drains like a lame duck: new connections get GOAWAY at once;
// every existing client gets GOAWAY at a random moment in the drain window
// (so they don't all reconnect together), calls in flight finish, then the
// event loops stop. If ctx ends first, whatever is left is closed. Safe to
// call twice.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.draining.Swap(true) {
		return s.Close()
	}
	var all []*conn
	s.wheel.Each(func(c *conn) { all = append(all, c) })
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	window := s.cfg.DrainWindow
	if dl, ok := ctx.Deadline(); ok && time.Until(dl)/2 < window {
		window = time.Until(dl) / 2
	}
	if s.fl() != nil {
		s.fl().f.AnnounceNow() // draining: off every node list now, not at the next interval
	}
	s.log.Info("draining", "connections", len(all), "window", window)
	const step = 10 * time.Millisecond
	steps := max(1, int(window/step))
	t := time.NewTicker(step)
	defer t.Stop()
	sent := 0
	for i := 1; i <= steps && sent < len(all); i++ {
		upto := len(all) * i / steps
		for ; sent < upto; sent++ {
			c := all[sent]
			if c.state.Load() == stateClosed || c.closeCode.Load() != 0 {
				continue // closed, or closing: nothing may follow its ERROR
			}
			s.drainAsync(c)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			i = steps
		}
	}
	for ; sent < len(all); sent++ {
		if all[sent].closeCode.Load() == 0 {
			s.drainAsync(all[sent])
		}
	}
	if s.httpSrv != nil {
		_ = s.httpSrv.Shutdown(ctx) // stop taking short connections, finish the ones in flight
	}
	if err := s.fwd.wait(ctx); err != nil {
		s.log.Warn("drain: calls still in flight at the deadline", "err", err)
	}
	s.log.Info("drained")
	return s.Close()
}
