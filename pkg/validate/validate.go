// Package validate checks user input the way the control plane's API does,
// so an extension's routes refuse bad input with the same errors: each
// failure is a *FieldError naming the field and saying what it must be.
// The API turns a FieldError into 400 invalid_argument.
package validate

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// FieldError is input that failed validation.
type FieldError struct {
	Field string // the request field, query parameter or route parameter
	Msg   string // what it must be, and what it was when that helps
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Errorf returns a FieldError for field.
func Errorf(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Name checks a required name of at most maxBytes bytes without control
// characters (a host's name, a team's).
func Name(field, s string, maxBytes int) error {
	switch {
	case s == "":
		return Errorf(field, "is required")
	case len(s) > maxBytes:
		return Errorf(field, "must be at most %d bytes", maxBytes)
	case !utf8.ValidString(s):
		return Errorf(field, "must be UTF-8")
	case strings.ContainsFunc(s, unicode.IsControl):
		return Errorf(field, "must not contain control characters")
	}
	return nil
}

// MaxDisplayName bounds a display name, in characters.
const MaxDisplayName = 64

// DisplayName trims s and checks it is at most MaxDisplayName printable
// characters; empty is allowed.
func DisplayName(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	if !utf8.ValidString(s) || utf8.RuneCountInString(s) > MaxDisplayName || strings.ContainsFunc(s, unicode.IsControl) {
		return "", Errorf(field, "must be at most %d printable characters", MaxDisplayName)
	}
	return s, nil
}

// MaxPath bounds a path inside a sandbox (Linux's PATH_MAX).
const MaxPath = 4096

// SandboxPath checks a path inside a sandbox: absolute, or relative to the
// user's home directory. envd resolves it for the user it acts as; what
// the user may reach is the sandbox's business, so this only refuses what
// no file system takes.
func SandboxPath(field, p string) error {
	switch {
	case p == "":
		return Errorf(field, "is required (an absolute path, or one relative to the user's home directory)")
	case strings.ContainsRune(p, 0):
		return Errorf(field, "must not contain a NUL byte")
	case len(p) > MaxPath:
		return Errorf(field, "is longer than %d bytes", MaxPath)
	}
	return nil
}

// Range checks min ≤ v ≤ max.
func Range(field string, v, min, max int) error {
	if v < min || v > max {
		return Errorf(field, "must be between %d and %d, got %d", min, max, v)
	}
	return nil
}

// Bounds of Metadata and Env.
const (
	MaxMapEntries = 64
	MaxKey        = 256
	MaxMetaValue  = 1024
	MaxEnvValue   = 32 << 10
)

// Metadata checks user metadata of a resource: at most MaxMapEntries
// entries, keys of 1..MaxKey bytes and values of at most MaxMetaValue
// bytes, all UTF-8 without control characters. Keys name the entry in
// errors: metadata.owner.
func Metadata(field string, m map[string]string) error {
	if len(m) > MaxMapEntries {
		return Errorf(field, "has %d entries; at most %d are allowed", len(m), MaxMapEntries)
	}
	for k, v := range m {
		if err := mapKey(field, k); err != nil {
			return err
		}
		if len(v) > MaxMetaValue || !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
			return Errorf(field+"."+k, "must be at most %d bytes of UTF-8 without control characters", MaxMetaValue)
		}
	}
	return nil
}

// Env checks environment variables: at most MaxMapEntries, names that a
// shell can export ([A-Za-z_][A-Za-z0-9_]*, at most MaxKey bytes) and
// values of at most MaxEnvValue bytes without NUL.
func Env(field string, m map[string]string) error {
	if len(m) > MaxMapEntries {
		return Errorf(field, "has %d variables; at most %d are allowed", len(m), MaxMapEntries)
	}
	for k, v := range m {
		if !envName(k) {
			return Errorf(field, "%q is not a variable name: use letters, digits and _, not starting with a digit, at most %d bytes", k, MaxKey)
		}
		if len(v) > MaxEnvValue || strings.ContainsRune(v, 0) {
			return Errorf(field+"."+k, "must be at most %d bytes without NUL", MaxEnvValue)
		}
	}
	return nil
}

func mapKey(field, k string) error {
	if k == "" || len(k) > MaxKey || !utf8.ValidString(k) || strings.ContainsFunc(k, unicode.IsControl) {
		return Errorf(field, "key %q must be 1 to %d bytes of UTF-8 without control characters", k, MaxKey)
	}
	return nil
}

func envName(k string) bool {
	if k == "" || len(k) > MaxKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
