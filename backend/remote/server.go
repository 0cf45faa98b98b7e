// Package remote carries backend.Backend over gRPC (LogicService in
// proto/logic.proto): Server serves any Backend (`longlink logic` serves the
// reference logic), and Client is the gateway's pool of logic instances
// (`--backend grpc://host:port,...`): consistent hashing of user ids to
// instances, per-call deadlines from the caller's context, retries of system
// failures only within a retry budget, ejection of failing or overloaded
// instances with probing back in, and per-method, per-instance metrics.
//
// Concurrency contract: Server and Client methods are goroutine-safe. A
// Client runs one prober goroutine until Close.
package remote

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// Server serves a Backend as LogicService. Calls beyond MaxInflight at once
// are answered "overloaded" (code 2002) at once, so clients eject this
// instance for a while instead of queueing on it.
type Server struct {
	pb.UnimplementedLogicServiceServer
	b   backend.Backend
	sem chan struct{}
}

// NewServer returns a Server for b admitting maxInflight calls at once
// (default 1024).
func NewServer(b backend.Backend, maxInflight int) *Server {
	if maxInflight <= 0 {
		maxInflight = 1024
	}
	return &Server{b: b, sem: make(chan struct{}, maxInflight)}
}

// Register adds the service to g.
func (s *Server) Register(g *grpc.Server) { pb.RegisterLogicServiceServer(g, s) }

// overloadRetryMS is the retry hint of an overloaded answer.
const overloadRetryMS = 200

// Call implements LogicService: logical, busy and unavailable answers
// travel in the reply, system failures as gRPC errors.
func (s *Server) Call(ctx context.Context, q *pb.CallRequest) (*pb.CallReply, error) {
	select {
	case s.sem <- struct{}{}:
	default:
		return &pb.CallReply{Code: uint32(codec.CodeBusy), Message: "logic instance overloaded", RetryAfterMs: overloadRetryMS}, nil
	}
	defer func() { <-s.sem }()
	body, err := s.b.Call(ctx, &backend.Request{UID: q.Uid, Device: q.Device, Node: q.Node, Method: q.Method, Body: q.Body})
	if err == nil {
		return &pb.CallReply{Body: body}, nil
	}
	switch kind, be := backend.Classify(err); kind {
	case backend.KindLogical:
		return &pb.CallReply{Code: uint32(be.Code), Message: be.Msg}, nil
	case backend.KindBusy:
		return &pb.CallReply{Code: uint32(codec.CodeBusy), Message: be.Msg, RetryAfterMs: be.RetryAfter}, nil
	case backend.KindUnavailable: // what the backend depends on (its store) is down, not this instance
		return &pb.CallReply{Code: uint32(codec.CodeUnavailable), Message: be.Msg, RetryAfterMs: be.RetryAfter}, nil
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return nil, status.Error(codes.DeadlineExceeded, err.Error())
	}
	return nil, status.Error(codes.Internal, err.Error())
}

// Presence implements LogicService.
func (s *Server) Presence(ctx context.Context, q *pb.PresenceEvent) (*pb.PresenceReply, error) {
	p := backend.Presence{UID: q.Uid, Device: q.Device, Node: q.Node, ConnID: q.ConnId}
	var err error
	if q.Online {
		err = s.b.Online(ctx, p)
	} else {
		err = s.b.Offline(ctx, p)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &pb.PresenceReply{}, nil
}

// Ping implements LogicService.
func (s *Server) Ping(context.Context, *pb.PingRequest) (*pb.PingReply, error) {
	return &pb.PingReply{Overloaded: len(s.sem) == cap(s.sem)}, nil
}
