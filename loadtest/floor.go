package loadtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// runFloor is the floor server: one epoll loop, no protocol, no state beyond
// the list of open descriptors. It accepts, echoes whatever it reads, and on
// the parent's "push" command writes one 16-byte message to every
// connection, timing that round with getrusage. The round goes in chunks of
// floorPushChunk writes between polls, so echoes keep being answered while
// it runs (in one piece it stalled the loop for seconds at 15,000
// connections, which showed up as the floor's heartbeat p99). Several of
// these share one port with SO_REUSEPORT when the connections exceed one
// process's files.
// floorPushChunk is how many pushed writes the floor makes between polls.
const floorPushChunk = 256

func runFloor(spec *childSpec, cmds <-chan string, out *statsWriter) error {
	ap, err := netip.ParseAddrPort(spec.Listen)
	if err != nil {
		return fmt.Errorf("listen %q: %v", spec.Listen, err)
	}
	sa, fam := sockaddr(ap.Addr(), ap.Port())
	lfd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(lfd)
	_ = unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("SO_REUSEPORT: %v", err)
	}
	if err := unix.Bind(lfd, sa); err != nil {
		return fmt.Errorf("bind %s: %v", spec.Listen, err)
	}
	if err := unix.Listen(lfd, 65535); err != nil {
		return fmt.Errorf("listen: %v", err)
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return err
	}
	var (
		fds                                  []int32 // open connections
		pos                                  []int32 // fd -> index in fds + 1 (0 = not ours)
		accepts, echoes, reads, pushWrites   int64
		pushCPU, pushBlocked, emfile, closes int64
		buf                                  = make([]byte, readBufLen)
		events                               = make([]unix.EpollEvent, 512)
		listening                            = true
		stopped                              bool
		pushNext                             = -1    // next index into fds of a push round; -1: none
		pushRate                             float64 // paced pushes per second (push-rate command); 0: none
		pacedFrom                            time.Time
		pacedDone                            int64
		pacedNext                            int
	)
	remove := func(fd int) {
		if fd < len(pos) && pos[fd] > 0 {
			i := pos[fd] - 1
			last := fds[len(fds)-1]
			fds[i] = last
			pos[last] = i + 1
			fds = fds[:len(fds)-1]
			pos[fd] = 0
		}
		unix.Close(fd)
		closes++
	}
	report := func(final bool) {
		out.write(&childStats{ID: spec.ID, Role: "floor", T: time.Now().UnixNano(), Final: final, C: map[string]int64{
			"floor_conns": int64(len(fds)), "floor_accepts": accepts, "floor_echoes": echoes, "floor_reads": reads,
			"floor_push_writes": pushWrites, "floor_push_cpu_ns": pushCPU, "floor_push_blocked": pushBlocked,
			"floor_emfile": emfile, "floor_closes": closes,
		}})
	}
	out.write(&childStats{ID: spec.ID, Role: "floor", T: time.Now().UnixNano(), Ready: true})
	next := time.Now().Add(time.Second)
	for !stopped {
		wait := 100
		if pushRate > 0 {
			wait = 10 // paced pushes: at least 100 rounds a second
		}
		if pushNext >= 0 {
			wait = 0 // a push round is under way: poll, don't sleep
		}
		n, err := unix.EpollWait(ep, events, wait)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("epoll_wait: %v", err)
		}
		for k := 0; k < n; k++ {
			fd := int(events[k].Fd)
			if fd == lfd {
				for a := 0; a < 256; a++ {
					cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
					if err != nil {
						if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
							// Out of files: stop accepting; the others in the
							// SO_REUSEPORT group keep going.
							emfile++
							listening = false
							_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, lfd, nil)
						}
						break
					}
					accepts++
					if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(cfd)}); err != nil {
						unix.Close(cfd)
						continue
					}
					for cfd >= len(pos) {
						pos = append(pos, make([]int32, len(pos)+1024)...)
					}
					fds = append(fds, int32(cfd))
					pos[cfd] = int32(len(fds))
				}
				continue
			}
			r, err := unix.Read(fd, buf)
			if r <= 0 {
				if err == nil || !errors.Is(err, unix.EAGAIN) {
					remove(fd)
				}
				continue
			}
			reads++
			echoes += int64(r / floorMsg)
			// Echo what was read; a full socket buffer drops it (no state).
			_, _ = unix.Write(fd, buf[:r])
		}
		select {
		case c := <-cmds:
			switch {
			case c == "stop":
				stopped = true
			case c == "push":
				if pushNext < 0 {
					pushNext = 0
				}
			case strings.HasPrefix(c, "push-rate "):
				// Paced pushes for the rest of the run, like the gateway leg's
				// notifies, so both sides' figure is whole-process CPU per
				// delivered push.
				if v, err := strconv.ParseFloat(strings.TrimPrefix(c, "push-rate "), 64); err == nil && v > 0 {
					pushRate, pacedFrom, pacedDone = v, time.Now(), 0
				}
			}
		default:
		}
		if pushRate > 0 && len(fds) > 0 {
			due := int64(time.Since(pacedFrom).Seconds()*pushRate) - pacedDone
			var m [floorMsg]byte
			m[0] = floorPush
			for ; due > 0; due-- {
				pacedNext %= len(fds)
				binary.BigEndian.PutUint64(m[1:9], uint64(time.Now().UnixNano()))
				if _, err := unix.Write(int(fds[pacedNext]), m[:]); err != nil {
					pushBlocked++
				} else {
					pushWrites++
				}
				pacedNext++
				pacedDone++
			}
		}
		if pushNext >= 0 {
			// A connection closed mid-round moves the last one into its
			// slot, which this round may then skip; in the steady state
			// none closes.
			var m [floorMsg]byte
			m[0] = floorPush
			c0 := selfCPU()
			end := min(pushNext+floorPushChunk, len(fds))
			for ; pushNext < end; pushNext++ {
				binary.BigEndian.PutUint64(m[1:9], uint64(time.Now().UnixNano()))
				if _, err := unix.Write(int(fds[pushNext]), m[:]); err != nil {
					pushBlocked++
					continue
				}
				pushWrites++
			}
			pushCPU += selfCPU() - c0
			if pushNext >= len(fds) {
				pushNext = -1
			}
		}
		if now := time.Now(); now.After(next) || stopped {
			next = now.Add(time.Second)
			report(stopped)
		}
		_ = listening
	}
	for _, fd := range fds {
		unix.Close(int(fd))
	}
	return nil
}
