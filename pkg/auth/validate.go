package auth

import (
	"fmt"
	"net/mail"
	"strings"
	"unicode/utf8"
)

// Password length bounds. The upper one keeps a hostile body from making
// every login hash megabytes.
const (
	MinPasswordLen = 10
	MaxPasswordLen = 256
	maxEmailLen    = 254
)

// ValidatePassword says what is wrong with password as a new password, in
// words meant for the user, or returns nil. Length counts characters.
func ValidatePassword(password string) error {
	if !utf8.ValidString(password) {
		return fmt.Errorf("must be valid UTF-8")
	}
	n := utf8.RuneCountInString(password)
	if n < MinPasswordLen {
		return fmt.Errorf("must be at least %d characters, got %d", MinPasswordLen, n)
	}
	if len(password) > MaxPasswordLen {
		return fmt.Errorf("must be at most %d bytes", MaxPasswordLen)
	}
	return nil
}

// NormalizeEmail returns the canonical form of an email address (trimmed,
// lower-cased) or says why it is not one. Only a plain addr-spec is
// accepted: no display name, no comments, an ASCII domain with a dot.
func NormalizeEmail(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return "", fmt.Errorf("is required")
	}
	if len(s) > maxEmailLen || !utf8.ValidString(s) {
		return "", fmt.Errorf("is not a valid email address")
	}
	addr, err := mail.ParseAddress(s)
	if err != nil || addr.Name != "" || addr.Address != s {
		return "", fmt.Errorf("is not a valid email address")
	}
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || strings.ContainsAny(local, " \"\\") {
		return "", fmt.Errorf("is not a valid email address")
	}
	if !validDomain(domain) {
		return "", fmt.Errorf("has an invalid domain %q", domain)
	}
	return s, nil
}

func validDomain(d string) bool {
	if len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
