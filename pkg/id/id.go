// Package id makes Wrenn's identifiers. IDs are a short prefix naming the kind
// of resource plus random lowercase base32, so they are DNS-label safe: they
// appear in host names such as 49983-sb-….wrenn.example.
package id

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"strings"
)

// Prefixes of Wrenn's resource IDs.
const (
	Sandbox  = "sb-"
	Template = "tpl-"
	Build    = "bld-"
	Host     = "host-"
	Team     = "team-"
	User     = "usr-"
	APIKey   = "key-"
	Event    = "evt-"
)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// New returns prefix plus 20 random base32 characters (100 bits).
func New(prefix string) string {
	var b [13]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux.
	return prefix + enc.EncodeToString(b[:])[:20]
}

// Valid reports whether s is an ID of the given kind.
func Valid(prefix, s string) bool {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok || len(rest) != 20 {
		return false
	}
	for _, r := range rest {
		if !(r >= 'a' && r <= 'z' || r >= '2' && r <= '7') {
			return false
		}
	}
	return true
}

// Secret returns n random bytes as lowercase hex, for tokens and keys.
func Secret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewAPIKey returns a fresh API key: wrn_ plus 32 hex characters.
func NewAPIKey() string { return "wrn_" + Secret(16) }
