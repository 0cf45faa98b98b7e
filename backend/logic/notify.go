package logic

import (
	"context"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// RouterNotifier notifies through a push.Router in the same process: the
// logic embedded in a gateway (or its supervisor) that runs the push hub.
type RouterNotifier struct{ Router *push.Router }

// Notify implements Notifier.
func (n RouterNotifier) Notify(_ context.Context, uid uint64, device string, typ uint32, ver uint64, payload []byte) error {
	_, err := n.Router.Notify(uid, device, typ, ver, payload)
	return err
}

// NATSNotifier publishes NotifyRequests on the push ingress subject, where
// any gateway host's router picks them up (docs/push.md): for `longlink
// logic` as its own process. Publishing is asynchronous and never blocks on
// the network.
type NATSNotifier struct{ Conn *nats.Conn }

// Notify implements Notifier.
func (n NATSNotifier) Notify(_ context.Context, uid uint64, device string, typ uint32, ver uint64, payload []byte) error {
	b, err := proto.Marshal(&pb.NotifyRequest{Uid: uid, Device: device, Type: typ, Version: ver, Payload: payload})
	if err != nil {
		return err
	}
	return n.Conn.Publish(push.SubjectNotify, b)
}

// GRPCNotifier calls a gateway host's PushService.
type GRPCNotifier struct{ Client pb.PushServiceClient }

// NewGRPCNotifier dials a PushService address (no TLS: a trusted network).
func NewGRPCNotifier(addr string, opts ...grpc.DialOption) (*GRPCNotifier, *grpc.ClientConn, error) {
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{insecureCreds()}, opts...)...)
	if err != nil {
		return nil, nil, err
	}
	return &GRPCNotifier{Client: pb.NewPushServiceClient(cc)}, cc, nil
}

// Notify implements Notifier.
func (n *GRPCNotifier) Notify(ctx context.Context, uid uint64, device string, typ uint32, ver uint64, payload []byte) error {
	_, err := n.Client.Notify(ctx, &pb.NotifyRequest{Uid: uid, Device: device, Type: typ, Version: ver, Payload: payload})
	return err
}

func insecureCreds() grpc.DialOption {
	return grpc.WithTransportCredentials(insecure.NewCredentials())
}
