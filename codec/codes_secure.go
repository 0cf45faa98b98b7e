package codec

// Close codes of transport encryption (HELLO; docs/protocol.md "Encryption").
const (
	CodeBadRecord    Code = 3010 // a sealed record failed authentication: tampered, cut, reordered or replayed
	CodeBadHandshake Code = 3011 // HELLO malformed, or its Noise message did not decrypt under the named key
	CodeRekey        Code = 3012 // a record counter reached its limit: reconnect at once (new keys)
	CodeEncRequired  Code = 4010 // plaintext AUTH where encryption is required: reconnect only with HELLO, never in plaintext
	CodeUnknownKey   Code = 4011 // HELLO names a server key id the server does not hold: update the pinned keys
)

func init() {
	codeNames[CodeBadRecord] = "bad_record"
	codeNames[CodeBadHandshake] = "bad_handshake"
	codeNames[CodeRekey] = "rekey"
	codeNames[CodeEncRequired] = "encryption_required"
	codeNames[CodeUnknownKey] = "unknown_server_key"
}
