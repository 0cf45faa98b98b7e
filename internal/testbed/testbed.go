// Package testbed is a multi-host network for tests, without Docker: N
// "hosts", each a Linux network namespace with its own address on a private
// bridge (10.213.1.0/24, the bridge itself in a namespace of its own so the
// machine's own network never sees it), plus a client namespace with many
// source addresses. Tests run processes inside a host (ip netns exec), kill
// every process of a host at once (kill -9), cut a host's link and restore
// it, and dial from the client namespace in-process.
//
// Where namespaces cannot be made (no CAP_NET_ADMIN: a developer laptop),
// the same API runs on loopback addresses (127.0.213.x for hosts,
// 127.0.214.x for clients); cutting a link is then unsupported
// (ErrUnsupported) and KillAll kills the processes the bed started.
// LONGLINK_BED=loopback forces that mode, LONGLINK_BED=off skips.
//
// Everything the bed makes is named llbed-<pid>-…: a bed sweeps the leftovers
// of earlier runs whose process is gone (a killed test) before it starts, and
// t.Cleanup removes its own.
package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsupported is returned by operations the loopback mode cannot do.
var ErrUnsupported = errors.New("testbed: not supported on loopback (needs network namespaces)")

const (
	prefix     = "llbed-"
	subnet     = "10.213.1."
	loHosts    = "127.0.213."
	loClients  = "127.0.214."
	clientBase = 100 // client addresses are .101, .102, …
)

// Mode is how the bed simulates hosts.
type Mode string

const (
	ModeNetns    Mode = "netns"
	ModeLoopback Mode = "loopback"
)

// Options configure a bed.
type Options struct {
	Hosts       int // gateway hosts (default 3)
	ClientAddrs int // source addresses in the client namespace (default 8)
}

// Bed is one test's network.
type Bed struct {
	t       testing.TB
	mode    Mode
	id      string // llbed-<pid>-<n>
	dir     string
	hosts   []*Host
	client  *Host
	mu      sync.Mutex
	procs   []*Proc
	cleanup []func()
}

// Host is one simulated machine (or the client side).
type Host struct {
	b     *Bed
	Name  string   // h0, h1, … or "client"
	ns    string   // namespace name ("" on loopback)
	IP    string   // its address
	IPs   []string // every address (the client has several)
	veth  string   // its link's name in the switch namespace
	index int
}

var seq struct {
	sync.Mutex
	n int
}

// New makes a bed or skips the test with the reason when neither mode
// works. It is removed at the test's end.
func New(t testing.TB, o Options) *Bed {
	t.Helper()
	if o.Hosts <= 0 {
		o.Hosts = 3
	}
	if o.ClientAddrs <= 0 {
		o.ClientAddrs = 8
	}
	if o.Hosts > 90 || o.ClientAddrs > 150 {
		t.Fatalf("testbed: at most 90 hosts and 150 client addresses")
	}
	want := os.Getenv("LONGLINK_BED")
	if want == "off" {
		t.Skip("testbed: LONGLINK_BED=off")
	}
	seq.Lock()
	seq.n++
	n := seq.n
	seq.Unlock()
	b := &Bed{t: t, id: fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), n), dir: t.TempDir()}
	t.Cleanup(b.close)
	if want != "loopback" {
		Sweep()
		err := b.makeNetns(o)
		if err == nil {
			b.mode = ModeNetns
			return b
		}
		t.Logf("testbed: network namespaces unavailable (%v); using loopback addresses", err)
		b.teardown()
		b.hosts, b.client = nil, nil
	}
	if err := b.makeLoopback(o); err != nil {
		t.Skipf("testbed: neither network namespaces nor loopback addresses work: %v", err)
	}
	b.mode = ModeLoopback
	return b
}

// Mode says how hosts are simulated.
func (b *Bed) Mode() Mode { return b.mode }

// Hosts returns the gateway hosts.
func (b *Bed) Hosts() []*Host { return b.hosts }

// Host returns host i.
func (b *Bed) Host(i int) *Host { return b.hosts[i] }

// Client returns the client side.
func (b *Bed) Client() *Host { return b.client }

// Dir is a directory for the test's files (logs land in it).
func (b *Bed) Dir() string { return b.dir }

func ipCmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (b *Bed) swNS() string { return b.id + "-sw" }

func (b *Bed) makeNetns(o Options) error {
	if _, err := exec.LookPath("ip"); err != nil {
		return err
	}
	sw := b.swNS()
	if err := ipCmd("netns", "add", sw); err != nil {
		return err
	}
	for _, c := range [][]string{
		{"-n", sw, "link", "set", "lo", "up"},
		{"-n", sw, "link", "add", "br0", "type", "bridge"},
		{"-n", sw, "link", "set", "br0", "up"},
	} {
		if err := ipCmd(c...); err != nil {
			return err
		}
	}
	mk := func(name string, index int, ips []string) (*Host, error) {
		h := &Host{b: b, Name: name, ns: b.id + "-" + name, IP: ips[0], IPs: ips, veth: name, index: index}
		if err := ipCmd("netns", "add", h.ns); err != nil {
			return nil, err
		}
		cmds := [][]string{
			{"-n", h.ns, "link", "set", "lo", "up"},
			{"-n", sw, "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns},
			{"-n", sw, "link", "set", h.veth, "master", "br0"},
			{"-n", sw, "link", "set", h.veth, "up"},
		}
		for _, ip := range ips {
			cmds = append(cmds, []string{"-n", h.ns, "addr", "add", ip + "/24", "dev", "eth0"})
		}
		cmds = append(cmds, []string{"-n", h.ns, "link", "set", "eth0", "up"})
		for _, c := range cmds {
			if err := ipCmd(c...); err != nil {
				return h, err
			}
		}
		return h, nil
	}
	for i := range o.Hosts {
		h, err := mk(fmt.Sprint("h", i), i, []string{subnet + strconv.Itoa(i+1)})
		if h != nil {
			b.hosts = append(b.hosts, h)
		}
		if err != nil {
			return err
		}
	}
	var cips []string
	for i := range o.ClientAddrs {
		cips = append(cips, subnet+strconv.Itoa(clientBase+1+i))
	}
	c, err := mk("client", -1, cips)
	b.client = c
	if err != nil {
		return err
	}
	// The first packets wait for neighbour discovery; make sure the
	// bridge forwards before anyone counts time.
	return b.waitReachable()
}

func (b *Bed) waitReachable() error {
	deadline := time.Now().Add(10 * time.Second)
	for _, h := range b.hosts {
		for {
			err := exec.Command("ip", "netns", "exec", b.client.ns, "ping", "-c1", "-W1", h.IP).Run()
			if err == nil {
				break
			}
			if _, lerr := exec.LookPath("ping"); lerr != nil {
				return nil // no ping here: trust the links
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("host %s (%s) unreachable from the client namespace: %v", h.Name, h.IP, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func (b *Bed) makeLoopback(o Options) error {
	for i := range o.Hosts {
		ip := loHosts + strconv.Itoa(i+1)
		b.hosts = append(b.hosts, &Host{b: b, Name: fmt.Sprint("h", i), IP: ip, IPs: []string{ip}, index: i})
	}
	var cips []string
	for i := range o.ClientAddrs {
		cips = append(cips, loClients+strconv.Itoa(clientBase+1+i))
	}
	b.client = &Host{b: b, Name: "client", IP: cips[0], IPs: cips, index: -1}
	ln, err := net.Listen("tcp", b.hosts[0].IP+":0")
	if err != nil {
		return err
	}
	defer ln.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(cips[0])}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	return c.Close()
}

// close kills every process and removes every namespace of the bed.
func (b *Bed) close() {
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		b.cleanup[i]()
	}
	b.mu.Lock()
	procs := b.procs
	b.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
	b.teardown()
	if b.t.Failed() {
		for _, p := range procs {
			b.t.Logf("--- %s/%s log tail (%s):\n%s", p.Host.Name, p.Name, p.LogPath, tail(p.LogPath, 40))
		}
	}
}

// OnClose runs f when the bed closes, before its processes are killed.
func (b *Bed) OnClose(f func()) { b.cleanup = append(b.cleanup, f) }

func (b *Bed) teardown() {
	if b.mode == ModeLoopback {
		return
	}
	for _, h := range append(append([]*Host(nil), b.hosts...), b.client) {
		if h != nil && h.ns != "" {
			removeNS(h.ns)
		}
	}
	removeNS(b.swNS())
}

func removeNS(ns string) {
	killNS(ns)
	_ = exec.Command("ip", "netns", "del", ns).Run()
}

// killNS sends SIGKILL to every process in namespace ns.
func killNS(ns string) int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return 0
	}
	n := 0
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	return n
}

// Sweep removes the namespaces of earlier beds whose test process is gone
// (a test killed before its cleanup ran).
func Sweep() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		pidS, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidS)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // its test still runs
		}
		removeNS(name)
	}
}

// Addr is host:port on this host's address.
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP, strconv.Itoa(port)) }

// Cut takes the host's link down (its packets are dropped, its sockets
// stay open: what a dead switch port or a partition looks like).
func (h *Host) Cut() error {
	if h.b.mode != ModeNetns {
		return ErrUnsupported
	}
	return ipCmd("-n", h.b.swNS(), "link", "set", h.veth, "down")
}

// Restore brings a cut link back.
func (h *Host) Restore() error {
	if h.b.mode != ModeNetns {
		return ErrUnsupported
	}
	return ipCmd("-n", h.b.swNS(), "link", "set", h.veth, "up")
}

// KillAll kills every process of the host at once with SIGKILL (in netns
// mode every process in its namespace, whoever started it). It returns how
// many it signalled.
func (h *Host) KillAll() int {
	n := 0
	if h.ns != "" {
		n = killNS(h.ns)
	}
	h.b.mu.Lock()
	procs := append([]*Proc(nil), h.b.procs...)
	h.b.mu.Unlock()
	for _, p := range procs {
		if p.Host == h {
			if p.signal(syscall.SIGKILL) {
				n++
			}
		}
	}
	return n
}

// Pids lists the host's processes (netns mode: every process in its
// namespace; loopback: the process groups' leaders the bed started).
func (h *Host) Pids() []int {
	var pids []int
	if h.ns != "" {
		out, _ := exec.Command("ip", "netns", "pids", h.ns).Output()
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	for _, p := range h.b.procs {
		if p.Host == h {
			pids = append(pids, p.cmd.Process.Pid)
		}
	}
	return pids
}

// Proc is a process the bed started on a host.
type Proc struct {
	Host    *Host
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// Start runs argv on the host, its output (both streams) in a log file in
// the bed's directory. The process is in its own process group, dies with
// the test (SIGKILL on the parent's death), and is killed at the bed's end.
func (h *Host) Start(name string, argv []string, env ...string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("testbed: empty command")
	}
	args := argv
	if h.ns != "" {
		args = append([]string{"ip", "netns", "exec", h.ns}, argv...)
	}
	logPath := filepath.Join(h.b.dir, h.Name+"-"+name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Start from an unlocked goroutine's thread: Pdeathsig follows the
	// forking thread, and a thread locked for a netns switch may exit.
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testbed: start %s on %s: %w", name, h.Name, err)
	}
	p := &Proc{Host: h, Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	h.b.mu.Lock()
	h.b.procs = append(h.b.procs, p)
	h.b.mu.Unlock()
	return p, nil
}

func (p *Proc) signal(s syscall.Signal) bool {
	select {
	case <-p.done:
		return false
	default:
	}
	return syscall.Kill(-p.cmd.Process.Pid, s) == nil
}

// Kill sends SIGKILL to the process's group and waits for it.
func (p *Proc) Kill() {
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// Stop sends SIGTERM and waits up to d, then kills.
func (p *Proc) Stop(d time.Duration) error {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.Kill()
		return fmt.Errorf("testbed: %s/%s did not stop within %v", p.Host.Name, p.Name, d)
	}
}

// Err is the process's exit error once Done is closed (nil: exit 0).
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Log is the process's output so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// DialContext dials from this host (in netns mode: a socket made inside
// its namespace, from its i-th address when src >= 0), for in-process
// clients of a test. Safe for concurrent use.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return h.DialFrom(ctx, -1, network, addr)
}

// DialFrom is DialContext from source address IPs[src % len(IPs)] (src < 0:
// the kernel's choice).
func (h *Host) DialFrom(ctx context.Context, src int, network, addr string) (net.Conn, error) {
	d := net.Dialer{}
	if src >= 0 {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(h.IPs[src%len(h.IPs)])}
	}
	if h.ns == "" {
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := h.inNS(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens on this host (in its namespace).
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	if h.ns == "" {
		return net.Listen(network, addr)
	}
	var ln net.Listener
	err := h.inNS(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// inNS runs f on an OS thread switched into the host's namespace. Sockets
// keep the namespace they were made in, so f's sockets live there after
// the thread switches back. A thread that cannot switch back is left
// locked, and the runtime ends it with the goroutine.
func (h *Host) inNS(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + h.ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testbed: setns %s: %w", h.ns, err)
			return
		}
		ferr := f()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
