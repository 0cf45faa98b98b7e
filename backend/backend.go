// Package backend defines what the gateway forwards to: a logic service that
// answers calls and hears presence events. Implementations must be
// goroutine-safe; the gateway calls them from its bounded worker pools, never
// from an event loop, so they may block (within the context's deadline).
//
// Errors are classified. A *Error of KindLogical is returned to the client as
// is (its code and message); anything else is a system failure: the gateway
// may retry it, and counts it as a "final system failure" if it still fails.
package backend

import (
	"context"
	"errors"
	"fmt"

	"github.com/longlink/longlink/codec"
)

// Request is one forwarded call.
type Request struct {
	UID    uint64
	Device string
	Node   string // gateway node that holds the caller's connection
	Method string
	Body   []byte // owned by the backend for the duration of Call; do not retain
}

// Presence is an Online or Offline event from a gateway.
type Presence struct {
	UID    uint64
	Device string
	Node   string
	ConnID uint64 // distinguishes reconnects of the same device
}

// Backend is the logic tier as the gateway sees it.
type Backend interface {
	// Call answers a request. The returned body is written to the client.
	Call(ctx context.Context, req *Request) ([]byte, error)
	// Online and Offline report presence. Errors are logged, not retried.
	Online(ctx context.Context, p Presence) error
	Offline(ctx context.Context, p Presence) error
	// Close releases resources.
	Close() error
}

// Kind classifies an error.
type Kind uint8

const (
	KindSystem      Kind = iota // retryable infrastructure failure
	KindLogical                 // business answer: return to the client as is
	KindBusy                    // overloaded: retry elsewhere or later
	KindUnavailable             // no backend instance can be reached now
)

// Error is a classified backend error.
type Error struct {
	Kind       Kind
	Code       codec.Code
	Msg        string
	RetryAfter uint32 // ms, for busy
}

func (e *Error) Error() string {
	return fmt.Sprintf("backend: %s (code %d): %s", kindName[e.Kind], e.Code, e.Msg)
}

var kindName = [...]string{KindSystem: "system", KindLogical: "logical", KindBusy: "busy", KindUnavailable: "unavailable"}

// Logical returns a logical error; code should be in 1000-1999.
func Logical(code codec.Code, msg string) error {
	return &Error{Kind: KindLogical, Code: code, Msg: msg}
}

// Busy returns an overload error with a retry hint in milliseconds.
func Busy(retryAfterMS uint32, msg string) error {
	return &Error{Kind: KindBusy, Code: codec.CodeBusy, Msg: msg, RetryAfter: retryAfterMS}
}

// Unavailable returns the error for "no backend instance is reachable".
func Unavailable(msg string) error {
	return &Error{Kind: KindUnavailable, Code: codec.CodeUnavailable, Msg: msg, RetryAfter: 1000}
}

// ErrUnknownMethod is the logical error for a method no handler serves.
func ErrUnknownMethod(method string) error {
	return &Error{Kind: KindLogical, Code: codec.CodeUnknownMethod, Msg: "unknown method " + method}
}

// Classify reports the kind of err. Context deadline errors are system
// failures (retryable elsewhere); nil is not an error at all.
func Classify(err error) (Kind, *Error) {
	var be *Error
	if errors.As(err, &be) {
		return be.Kind, be
	}
	return KindSystem, nil
}
