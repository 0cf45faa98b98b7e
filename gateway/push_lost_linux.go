package gateway

import "golang.org/x/sys/unix"

// sendQueued returns the bytes in the socket's send queue that the peer has
// not acknowledged (SIOCOUTQ); on error, 1 (unknown: assume some).
func sendQueued(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 1
	}
	return n
}
