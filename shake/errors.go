package shake

import "errors"

// Sentinel errors; callers match them with errors.Is.
var (
	// ErrUnknownKey: the record names a key id that the key store lacks.
	ErrUnknownKey = errors.New("shake: unknown key id")
	// ErrKeyBlacklisted: the record's key id is on the blacklist.
	ErrKeyBlacklisted = errors.New("shake: key id blacklisted")
	// ErrKeyNotAllowed: a whitelist is set and the key id is not on it.
	ErrKeyNotAllowed = errors.New("shake: key id not whitelisted")
	// ErrBadTicket: the ticket does not decrypt to a plaintext of this plan
	// (forged, tampered with, or from another generation).
	ErrBadTicket = errors.New("shake: ticket fails verification")
	// ErrBadHeader: a ticket file header is malformed or corrupt.
	ErrBadHeader = errors.New("shake: bad ticket file header")
	// ErrBadBudget: the budget file does not validate.
	ErrBadBudget = errors.New("shake: invalid budget")
	// ErrBadLedger: the ledger export is malformed.
	ErrBadLedger = errors.New("shake: malformed ledger")
)
