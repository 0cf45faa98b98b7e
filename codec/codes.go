package codec

// Code is a client-facing status or close code, carried in Response.code,
// Error.code and GoAway.code. The ranges tell a client what to do without
// knowing every code (the table with actions is in docs/protocol.md):
//
//	0          OK
//	1000-1999  logical failure of a call: show or handle it; retrying the same call won't help
//	2000-2999  transient failure of a call: retry after retry_after_ms, with backoff
//	3000-3999  connection closed, reconnect after retry_after_ms (jittered backoff), then sync
//	4000-4999  connection closed, do NOT reconnect until the app fixes the cause (new token, upgrade)
type Code uint32

const (
	OK Code = 0

	// Logical (1000-1999). Backends may define their own codes in 1100-1999.
	CodeLogical       Code = 1000 // generic logical failure from the backend
	CodeUnknownMethod Code = 1001
	CodeBadRequest    Code = 1002 // malformed request body or method
	CodeBodyTooLarge  Code = 1003

	// Transient call failures (2000-2999).
	CodeSystem      Code = 2000 // backend failed after retries ("final system failure")
	CodeTimeout     Code = 2001 // deadline exceeded
	CodeBusy        Code = 2002 // shed by overload control or a full queue; retry after retry_after_ms
	CodeUnavailable Code = 2003 // no backend instance available
	CodeTooManyCall Code = 2004 // too many calls in flight on this connection

	// Close, reconnect (3000-3999).
	CodeProtocol     Code = 3000 // malformed frame, bad magic or flags: fix the client, reconnect with backoff
	CodeAuthTimeout  Code = 3001 // no AUTH within the deadline
	CodeStale        Code = 3002 // no frame within the idle timeout (server side; client may not see it)
	CodeSlowConsumer Code = 3003 // outbound queue over the cap: reconnect and sync
	CodeShutdown     Code = 3004 // server draining (GOAWAY): reconnect after reconnect_after_ms
	CodeFrameTooBig  Code = 3005 // body length over the limit
	CodeFlood        Code = 3006 // too many frames per second
	CodeServerBusy   Code = 3007 // connection admission refused: reconnect after retry_after_ms
	CodeNotAuthed    Code = 3008 // a frame other than AUTH before AUTH_OK
	CodeAuthTwice    Code = 3009 // a second AUTH on an authenticated connection
	CodeFrameTooSlow Code = 3013 // a started frame progressed slower than the minimum rate (Config.MinFrameRate)
	CodeRedirect     Code = 3014 // GOAWAY: this host sends the client elsewhere (GoAway.nodes, docs/fleet.md)

	// Close, do not reconnect (4000-4999).
	CodeBadToken     Code = 4001 // token forged, malformed or signed by an unknown key
	CodeTokenExpired Code = 4002 // get a fresh token, then reconnect
	CodeBadVersion   Code = 4003 // protocol version unsupported: upgrade the client
	CodeReplaced     Code = 4004 // the same device authenticated on another connection
	CodeBadAuth      Code = 4005 // the AUTH body is malformed or a field is out of range: fix the request, the token may be fine
)

var codeNames = map[Code]string{
	OK: "ok", CodeLogical: "logical", CodeUnknownMethod: "unknown_method", CodeBadRequest: "bad_request",
	CodeBodyTooLarge: "body_too_large", CodeSystem: "system", CodeTimeout: "timeout", CodeBusy: "busy",
	CodeUnavailable: "unavailable", CodeTooManyCall: "too_many_calls", CodeProtocol: "protocol_error",
	CodeAuthTimeout: "auth_timeout", CodeStale: "stale", CodeSlowConsumer: "slow_consumer",
	CodeShutdown: "shutdown", CodeFrameTooBig: "frame_too_large", CodeFlood: "flood",
	CodeServerBusy: "server_busy", CodeNotAuthed: "not_authenticated", CodeAuthTwice: "auth_twice",
	CodeFrameTooSlow: "frame_too_slow", CodeRedirect: "redirect", CodeBadAuth: "bad_auth",
	CodeBadToken: "bad_token", CodeTokenExpired: "token_expired", CodeBadVersion: "bad_version",
	CodeReplaced: "replaced",
}

// String returns the code's short snake_case name, used as a metric label.
func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	switch {
	case c >= 1000 && c < 2000:
		return "logical"
	case c >= 2000 && c < 3000:
		return "transient"
	case c >= 3000 && c < 4000:
		return "closed_reconnect"
	case c >= 4000 && c < 5000:
		return "closed_terminal"
	}
	return "unknown"
}

// Reconnect reports whether a client may reconnect after a close with c.
func (c Code) Reconnect() bool { return c < 4000 || c >= 5000 }

// Retryable reports whether a failed call with c may be retried.
func (c Code) Retryable() bool { return c >= 2000 && c < 3000 }

// ErrCode maps a framing error from ParseHeader or Split to its close code.
func ErrCode(err error) Code {
	switch err {
	case ErrTooLarge:
		return CodeFrameTooBig
	case ErrBadVersion:
		return CodeBadVersion
	default:
		return CodeProtocol
	}
}
