package client

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// Shake red packets (docs/protocol.md, SHAKE and OPEN). Both are plain
// request/answer exchanges on the connection; neither is retried here.
// Callers honour the server's hints: ShakeRsp.RetryAfterMs after "no
// packet", MinIntervalMs and ProbabilityPermille while the server degrades.
// An OPEN may be repeated safely with the same ticket (after ErrConnLost,
// a timeout, or code 6/7): the answer is the same amount, Again set.

// Shake sends a SHAKE and returns the server's answer.
func (c *Client) Shake(ctx context.Context) (*pb.ShakeRsp, error) {
	b, err := c.roundTrip(ctx, codec.CmdShake, nil)
	if err != nil {
		return nil, err
	}
	var r pb.ShakeRsp
	if err := proto.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Open presents a sealed ticket from Shake and returns the answer (code 0:
// AmountFen was credited to this user, durably queued).
func (c *Client) Open(ctx context.Context, ticket []byte) (*pb.OpenRsp, error) {
	payload, err := proto.Marshal(&pb.Open{Ticket: ticket})
	if err != nil {
		return nil, err
	}
	b, err := c.roundTrip(ctx, codec.CmdOpen, payload)
	if err != nil {
		return nil, err
	}
	var r pb.OpenRsp
	if err := proto.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// OpenRetrying opens until a definitive answer (anything but unavailable or
// busy, or a lost connection), waiting as the server says, until ctx ends.
func (c *Client) OpenRetrying(ctx context.Context, ticket []byte) (*pb.OpenRsp, error) {
	for {
		r, err := c.Open(ctx, ticket)
		wait := 200 * time.Millisecond
		switch {
		case err == nil && r.Code != 6 && r.Code != 7:
			return r, nil
		case err == nil:
			wait = max(wait, time.Duration(r.RetryAfterMs)*time.Millisecond)
		case ctx.Err() != nil:
			return nil, err
		case !errors.Is(err, ErrConnLost) && !errors.Is(err, ErrNotReady):
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		_ = c.WaitReady(ctx)
	}
}

// roundTrip sends one frame of cmd and waits for the answer with the same
// sequence number.
func (c *Client) roundTrip(ctx context.Context, cmd codec.Cmd, payload []byte) ([]byte, error) {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s == nil {
		return nil, ErrNotReady
	}
	ch := make(chan result, 1)
	s.pmu.Lock()
	if len(s.pending) >= 60000 {
		s.pmu.Unlock()
		return nil, ErrTooManyCall
	}
	seq := s.seq
	for {
		seq++
		if _, used := s.pending[seq]; seq != 0 && !used {
			break
		}
	}
	s.seq = seq
	s.pending[seq] = ch
	s.pmu.Unlock()
	select {
	case <-s.closed:
		return nil, ErrConnLost
	default:
	}
	if err := s.write(codec.AppendFrame(nil, cmd, 0, seq, payload)); err != nil {
		s.close(err)
	}
	select {
	case r := <-ch:
		return r.raw, r.err
	case <-ctx.Done():
		s.pmu.Lock()
		delete(s.pending, seq)
		s.pmu.Unlock()
		return nil, ctx.Err()
	}
}

// deliverRaw hands an answer's body (RESPONSE, SHAKE_RESP, OPEN_RESP) to its waiter.
func (s *session) deliverRaw(seq uint16, body []byte) {
	s.pmu.Lock()
	ch := s.pending[seq]
	delete(s.pending, seq)
	s.pmu.Unlock()
	if ch != nil {
		ch <- result{raw: body} // the frame reader already copied it
	}
}
