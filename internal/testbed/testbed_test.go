package testbed

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be an echo server on a host
// (LONGLINK_TESTBED_ECHO=host:port).
func TestMain(m *testing.M) {
	if addr := os.Getenv("LONGLINK_TESTBED_ECHO"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(1)
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s says %s", os.Getenv("HOSTNAME_BED"), l)
				}
			}()
		}
	}
	os.Exit(m.Run())
}

func echo(t *testing.T, b *Bed, src int, addr string, d time.Duration) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := b.Client().DialFrom(ctx, src, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	fmt.Fprintf(c, "hi from %s\n", c.LocalAddr().(*net.TCPAddr).IP)
	return bufio.NewReader(c).ReadString('\n')
}

func startEcho(t *testing.T, h *Host, port int) *Proc {
	t.Helper()
	p, err := h.Start("echo", []string{os.Args[0], "-test.run=^$"}, "LONGLINK_TESTBED_ECHO="+h.Addr(port), "HOSTNAME_BED="+h.Name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitEcho(t *testing.T, b *Bed, addr string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := echo(t, b, 0, addr, time.Second)
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("echo at %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBed: hosts have their own addresses and the same port on each;
// clients dial from chosen source addresses; KillAll kills the host's
// processes at once; Cut drops the host's packets and Restore brings it
// back (netns mode); everything is gone after the bed closes.
func TestBed(t *testing.T) {
	for _, mode := range []string{"", "loopback"} {
		t.Run("mode="+mode, func(t *testing.T) {
			if mode != "" {
				t.Setenv("LONGLINK_BED", mode)
			}
			var id string
			var made Mode
			t.Run("bed", func(t *testing.T) {
				b := New(t, Options{Hosts: 2, ClientAddrs: 3})
				id, made = b.id, b.Mode()
				t.Logf("mode %s, hosts %s %s, client %v", b.Mode(), b.Host(0).IP, b.Host(1).IP, b.Client().IPs)
				const port = 17850
				startEcho(t, b.Host(0), port)
				startEcho(t, b.Host(1), port)
				a0, a1 := b.Host(0).Addr(port), b.Host(1).Addr(port)
				if s := waitEcho(t, b, a0); !strings.HasPrefix(s, "h0 says") {
					t.Fatalf("h0 answered %q", s)
				}
				if s := waitEcho(t, b, a1); !strings.HasPrefix(s, "h1 says") {
					t.Fatalf("h1 answered %q", s)
				}
				s, err := echo(t, b, 2, a1, 2*time.Second)
				if err != nil || !strings.Contains(s, b.Client().IPs[2]) {
					t.Fatalf("from source address 2: %q %v", s, err)
				}
				// Cut: no answer (a timeout, not a refusal), then back.
				if err := b.Host(1).Cut(); err == ErrUnsupported {
					t.Log("cut: unsupported in this mode")
				} else if err != nil {
					t.Fatal(err)
				} else {
					if _, err := echo(t, b, 0, a1, 500*time.Millisecond); err == nil || !isTimeout(err) {
						t.Fatalf("a cut host answered or refused: %v", err)
					}
					if _, err := echo(t, b, 0, a0, 2*time.Second); err != nil {
						t.Fatalf("cutting h1 broke h0: %v", err)
					}
					if err := b.Host(1).Restore(); err != nil {
						t.Fatal(err)
					}
					waitEcho(t, b, a1)
				}
				if n := b.Host(0).KillAll(); n == 0 {
					t.Fatal("KillAll signalled nothing")
				}
				time.Sleep(100 * time.Millisecond)
				if _, err := echo(t, b, 0, a0, time.Second); err == nil {
					t.Fatal("h0 still answers after KillAll")
				}
				if _, err := echo(t, b, 0, a1, 2*time.Second); err != nil {
					t.Fatalf("killing h0 broke h1: %v", err)
				}
			})
			if made == ModeNetns {
				out, _ := exec.Command("ip", "netns", "list").Output()
				if strings.Contains(string(out), id) {
					t.Fatalf("namespaces left after the bed closed:\n%s", out)
				}
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	if e, ok := err.(net.Error); ok {
		ne = e
	}
	return ne != nil && ne.Timeout() || strings.Contains(err.Error(), "timeout") || strings.Contains(err.Error(), "deadline")
}

// TestSweepRemovesStaleBeds: a namespace of a bed whose process is gone is
// removed; one of a live process is kept.
func TestSweepRemovesStaleBeds(t *testing.T) {
	if err := exec.Command("ip", "netns", "add", "llbed-0-probe").Run(); err != nil {
		t.Skipf("cannot make network namespaces: %v", err)
	}
	stale := "llbed-99999999-1-h0" // no such pid
	live := fmt.Sprintf("llbed-%d-1-h0", os.Getppid())
	_ = exec.Command("ip", "netns", "del", "llbed-0-probe").Run()
	for _, n := range []string{stale, live} {
		if err := exec.Command("ip", "netns", "add", n).Run(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", live).Run()
		_ = exec.Command("ip", "netns", "del", stale).Run()
	})
	Sweep()
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), stale) {
		t.Error("a stale bed's namespace survived the sweep")
	}
	if !strings.Contains(string(out), live) {
		t.Error("a live bed's namespace was swept")
	}
}
