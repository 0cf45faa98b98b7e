package loadtest

import (
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fileLimit returns the hard open-file limit (0 if unknown).
func fileLimit() uint64 {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) != nil {
		return 0
	}
	return r.Max
}

// raiseFileLimit sets the soft open-file limit to the hard one.
func raiseFileLimit() {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &r)
	}
}

// portRange returns the number of ephemeral ports (0 if unknown).
func portRange() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	return hi - lo + 1
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// procUsage is a process's CPU time and resident memory.
type procUsage struct {
	CPU  float64 // user+system seconds
	RSS  int64   // bytes
	Anon int64   // RssAnon: anonymous resident bytes (heap, stacks)
}

// readProc reads /proc/<pid>/stat (utime, stime) and /proc/<pid>/status
// (VmRSS, RssAnon). ok is false when the process is gone.
func readProc(pid int) (u procUsage, ok bool) {
	p := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(p + "/stat")
	if err != nil {
		return u, false
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line (11 and 12 after ") ").
	if i := bytes.LastIndexByte(b, ')'); i >= 0 {
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 12 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			u.CPU = (ut + st) / clockTicks
		}
	}
	s, err := os.ReadFile(p + "/status")
	if err != nil {
		return u, false
	}
	kb := func(rest string) int64 {
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0
		}
		v, _ := strconv.ParseInt(f[0], 10, 64)
		return v << 10
	}
	for _, line := range strings.Split(string(s), "\n") {
		if rest, found := strings.CutPrefix(line, "VmRSS:"); found {
			u.RSS = kb(rest)
		} else if rest, found := strings.CutPrefix(line, "RssAnon:"); found {
			u.Anon = kb(rest)
			break // RssAnon follows VmRSS
		}
	}
	return u, true
}

// selfCPU returns this process's user+system CPU time in nanoseconds, with
// getrusage's microsecond resolution (finer than /proc's 10 ms ticks).
func selfCPU() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
