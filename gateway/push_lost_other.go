//go:build !linux

package gateway

// sendQueued: the send queue is not known here; assume bytes are left.
func sendQueued(int) int { return 1 }
