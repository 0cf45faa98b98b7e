package fleet

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// Place is where a client (or a host) is: its region and carrier tags.
type Place struct {
	Region, Carrier string
}

// Table maps client networks to places (the --region-table file): one
// "CIDR region [carrier]" per line, '#' starts a comment. The longest
// matching prefix wins.
type Table struct {
	lens  []int // prefix lengths present, longest first
	byLen map[int]map[netip.Prefix]Place
	n     int
}

// ParseTable reads a table.
func ParseTable(r io.Reader) (*Table, error) {
	t := &Table{byLen: map[int]map[netip.Prefix]Place{}}
	sc := bufio.NewScanner(r)
	for ln := 1; sc.Scan(); ln++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 2 || len(f) > 3 {
			return nil, fmt.Errorf("fleet: region table line %d: want \"CIDR region [carrier]\"", ln)
		}
		p, err := netip.ParsePrefix(f[0])
		if err != nil {
			return nil, fmt.Errorf("fleet: region table line %d: %w", ln, err)
		}
		p = p.Masked()
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("fleet: region table line %d: write IPv4 networks as IPv4", ln)
		}
		pl := Place{Region: f[1]}
		if len(f) == 3 {
			pl.Carrier = f[2]
		}
		if err := checkTag(pl.Region); err != nil {
			return nil, fmt.Errorf("fleet: region table line %d: region: %w", ln, err)
		}
		if err := checkTag(pl.Carrier); pl.Carrier != "" && err != nil {
			return nil, fmt.Errorf("fleet: region table line %d: carrier: %w", ln, err)
		}
		bits := p.Bits()
		if p.Addr().Is6() {
			bits += 1000 // keep the families apart: a /8 of each is not the same length
		}
		m := t.byLen[bits]
		if m == nil {
			m = map[netip.Prefix]Place{}
			t.byLen[bits] = m
			t.lens = append(t.lens, bits)
		}
		if _, dup := m[p]; dup {
			return nil, fmt.Errorf("fleet: region table line %d: %s twice", ln, p)
		}
		m[p] = pl
		t.n++
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	slices.Sort(t.lens)
	slices.Reverse(t.lens)
	return t, nil
}

// LoadTable reads a table file.
func LoadTable(path string) (*Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := ParseTable(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Len is the number of networks in the table.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return t.n
}

// Lookup returns the place of the longest prefix holding a. It allocates
// nothing (it runs at every AUTH).
func (t *Table) Lookup(a netip.Addr) (Place, bool) {
	if t == nil || !a.IsValid() {
		return Place{}, false
	}
	a = a.Unmap()
	six := a.Is6()
	for _, l := range t.lens {
		bits := l
		if six {
			if l < 1000 {
				continue
			}
			bits -= 1000
		} else if l >= 1000 {
			continue
		}
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		if pl, ok := t.byLen[l][p]; ok {
			return pl, true
		}
	}
	return Place{}, false
}

// checkTag accepts region, carrier and host names: letters, digits, '-'
// and '_' (they travel in NATS subjects and metrics), 1-64 of them.
func checkTag(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("%q: want 1-64 characters", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%q: only letters, digits, '-' and '_'", s)
		}
	}
	return nil
}

// CheckTag reports whether s is a valid host id, region or carrier.
func CheckTag(s string) error { return checkTag(s) }

// HostID makes a valid host id of a host name (dots and other characters
// become '-').
func HostID(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	if len(b) == 0 {
		return "host"
	}
	return string(b)
}
