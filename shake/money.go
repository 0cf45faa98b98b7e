package shake

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Money is an amount in fen (0.01 yuan). Budgets write it in yuan with at
// most two decimals ("300000", "0.01", 12.5); it is parsed from the text,
// never through a float, so no amount is ever rounded.
type Money int64

// ParseMoney parses a non-negative yuan amount with at most two decimals.
func ParseMoney(s string) (Money, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimPrefix(t, "¥")
	if t == "" {
		return 0, fmt.Errorf("empty amount")
	}
	intPart, frac, hasDot := strings.Cut(t, ".")
	if intPart == "" || (hasDot && (frac == "" || len(frac) > 2)) {
		return 0, fmt.Errorf("amount %q: want yuan with at most two decimals", s)
	}
	for _, p := range []string{intPart, frac} {
		for _, c := range p {
			if c < '0' || c > '9' {
				return 0, fmt.Errorf("amount %q: want yuan with at most two decimals", s)
			}
		}
	}
	y, err := strconv.ParseInt(intPart, 10, 64)
	if err != nil || y > math.MaxInt64/100-1 {
		return 0, fmt.Errorf("amount %q: too large", s)
	}
	f := int64(0)
	if frac != "" {
		f, _ = strconv.ParseInt(frac, 10, 64)
		if len(frac) == 1 {
			f *= 10
		}
	}
	return Money(y*100 + f), nil
}

// String formats as yuan with two decimals, e.g. "300000.00".
func (m Money) String() string {
	sign := ""
	v := int64(m)
	if v < 0 {
		sign, v = "-", -v
	}
	return fmt.Sprintf("%s%d.%02d", sign, v/100, v%100)
}

// UnmarshalYAML parses the scalar's text exactly (YAML and JSON budgets).
func (m *Money) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: amount must be a number or string", n.Line)
	}
	v, err := ParseMoney(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*m = v
	return nil
}
