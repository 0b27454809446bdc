package config

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a byte size such as 5G, 2Gi, 1000M or 512Mi. Decimal
// suffixes (K, M, G, T) are powers of 1000, binary ones (Ki, Mi, Gi, Ti)
// powers of 1024; a bare number is bytes.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q must start with a whole number, as in 5G, 2Gi, 1000M or 512Mi", s)
	}
	n, err := strconv.ParseUint(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	mult := map[string]uint64{
		"": 1, "B": 1,
		"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
		"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
	}
	m, ok := mult[t[i:]]
	if !ok {
		return 0, fmt.Errorf("size %q has unknown unit %q: use K, M, G, T or Ki, Mi, Gi, Ti", s, t[i:])
	}
	if n > ^uint64(0)/m {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * m, nil
}
