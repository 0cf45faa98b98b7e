package opening

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
)

// Serve runs o as an opener service: it answers OpenRequests on
// ServiceSubj in the ServiceQueue group (any number of opener processes
// share the load), each on its own goroutine, at most workers at a time.
// Stop it by draining or closing nc, or with the returned subscription.
func Serve(nc *nats.Conn, o *Opener, workers int) (*nats.Subscription, error) {
	if workers <= 0 {
		workers = 256
	}
	sem := make(chan struct{}, workers)
	return nc.QueueSubscribe(ServiceSubj, ServiceQueue, func(m *nats.Msg) {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			var q pb.OpenRequest
			var r Result
			if err := proto.Unmarshal(m.Data, &q); err != nil {
				r = Result{Code: Invalid}
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
				r = o.Open(ctx, q.Uid, q.Ticket)
				cancel()
			}
			b, _ := proto.Marshal(r.Rsp())
			_ = m.Respond(b)
		}()
	})
}

// Remote is an Interface that asks an opener service over NATS.
type Remote struct {
	NC   *nats.Conn
	Node string // this gateway, for the opener's logs
}

// Open sends the request and waits for the answer until ctx ends
// (Unavailable if no opener answers: the client retries, and a claim that
// did happen is found again by the retry).
func (r *Remote) Open(ctx context.Context, uid uint64, sealed []byte) Result {
	b, _ := proto.Marshal(&pb.OpenRequest{Uid: uid, Ticket: sealed, Node: r.Node})
	for {
		m, err := r.NC.RequestWithContext(ctx, ServiceSubj, b)
		if err == nil {
			var rsp pb.OpenRsp
			if proto.Unmarshal(m.Data, &rsp) != nil {
				return Result{Code: Unavailable, RetryAfter: time.Second}
			}
			return FromRsp(&rsp)
		}
		select {
		case <-ctx.Done():
			return Result{Code: Unavailable, RetryAfter: time.Second}
		case <-time.After(100 * time.Millisecond): // no responders yet (an opener restarting)
		}
	}
}
