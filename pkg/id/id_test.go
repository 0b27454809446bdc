package id

import (
	"strings"
	"testing"
)

func TestNewIsValidAndUnique(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, prefix := range []string{Sandbox, Template, Build, Host, Team, User, APIKey, Event} {
		for range 1000 {
			s := New(prefix)
			if !Valid(prefix, s) {
				t.Fatalf("New(%q) = %q, which Valid rejects", prefix, s)
			}
			if seen[s] {
				t.Fatalf("New(%q) repeated %q", prefix, s)
			}
			seen[s] = true
			// IDs appear in host names: a DNS label is at most 63
			// characters of [a-z0-9-].
			if len(s) > 63 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
				t.Fatalf("%q is not a DNS label", s)
			}
		}
	}
}

func TestValid(t *testing.T) {
	t.Parallel()
	good := New(Sandbox)
	tests := []struct {
		name, prefix, s string
		want            bool
	}{
		{"fresh", Sandbox, good, true},
		{"other kind", Host, good, false},
		{"no prefix", Sandbox, good[len(Sandbox):], false},
		{"short", Sandbox, good[:len(good)-1], false},
		{"long", Sandbox, good + "a", false},
		{"upper case", Sandbox, strings.ToUpper(good), false},
		{"outside base32", Sandbox, good[:len(good)-1] + "1", false},
		{"path", Sandbox, "sb-../../etc/passwd/aaaa", false},
		{"empty", Sandbox, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Valid(tc.prefix, tc.s); got != tc.want {
				t.Errorf("Valid(%q, %q) = %v, want %v", tc.prefix, tc.s, got, tc.want)
			}
		})
	}
}

func TestSecretsAndKeys(t *testing.T) {
	t.Parallel()
	if s := Secret(16); len(s) != 32 || strings.Trim(s, "0123456789abcdef") != "" {
		t.Errorf("Secret(16) = %q, want 32 hex characters", s)
	}
	a, b := NewAPIKey(), NewAPIKey()
	if a == b || !strings.HasPrefix(a, "wrn_") || len(a) != 36 {
		t.Errorf("NewAPIKey gave %q and %q", a, b)
	}
}

func FuzzValid(f *testing.F) {
	f.Add(Sandbox, New(Sandbox))
	f.Add(Host, "host-")
	f.Fuzz(func(t *testing.T, prefix, s string) {
		if Valid(prefix, s) && (len(s) != len(prefix)+20 || !strings.HasPrefix(s, prefix)) {
			t.Fatalf("Valid(%q, %q) accepted a malformed id", prefix, s)
		}
	})
}
