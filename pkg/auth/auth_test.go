package auth

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// cheap keeps tests fast; the format and verification are the same.
var cheap = Params{Time: 1, Memory: 1024, Threads: 1, KeyLen: 32, SaltLen: 16}

func TestHashAndVerify(t *testing.T) {
	t.Parallel()
	h, err := HashPassword("correct horse battery", cheap)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=1024,t=1,p=1$") {
		t.Fatalf("hash %q", h)
	}
	h2, _ := HashPassword("correct horse battery", cheap)
	if h == h2 {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	if err := VerifyPassword("correct horse battery", h); err != nil {
		t.Fatalf("verify right password: %v", err)
	}
	if err := VerifyPassword("correct horse batterY", h); !errors.Is(err, ErrMismatch) {
		t.Fatalf("verify wrong password: %v", err)
	}
	// The default parameters work too (and are what production uses).
	hd, err := HashPassword("0123456789", DefaultParams)
	if err != nil || VerifyPassword("0123456789", hd) != nil {
		t.Fatalf("default params: %v", err)
	}
}

func TestVerifyRejectsBadHashes(t *testing.T) {
	t.Parallel()
	good, _ := HashPassword("0123456789", cheap)
	parts := strings.Split(good, "$")
	for name, h := range map[string]string{
		"empty":       "",
		"bcrypt":      "$2a$10$abcdefghijklmnopqrstuv",
		"argon2i":     strings.Replace(good, "argon2id", "argon2i", 1),
		"version":     strings.Replace(good, "v=19", "v=16", 1),
		"huge memory": strings.Replace(good, "m=1024", "m=99999999", 1),
		"zero time":   strings.Replace(good, "t=1", "t=0", 1),
		"bad salt":    "$" + strings.Join([]string{parts[1], parts[2], parts[3], "!!", parts[5]}, "$"),
		"empty hash":  "$" + strings.Join([]string{parts[1], parts[2], parts[3], parts[4], ""}, "$"),
	} {
		err := VerifyPassword("0123456789", h)
		if err == nil || errors.Is(err, ErrMismatch) {
			t.Errorf("%s: got %v, want a malformed-hash error", name, err)
		}
	}
}

func TestNormalizeEmail(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"Alice@Example.COM", "alice@example.com"},
		{"  bob.smith+tag@mail.example.org ", "bob.smith+tag@mail.example.org"},
		{"x@a-b.io", "x@a-b.io"},
	} {
		got, err := NormalizeEmail(c.in)
		if err != nil || got != c.want {
			t.Errorf("NormalizeEmail(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "alice", "alice@", "@example.com", "alice@localhost", "Alice <a@b.co>",
		"a@b..co", "a@-b.co", "a b@c.co", "a@b_c.co", `"a"@b.co`, strings.Repeat("a", 250) + "@b.co", "a@bü.co"} {
		if got, err := NormalizeEmail(in); err == nil {
			t.Errorf("NormalizeEmail(%q) = %q, want an error", in, got)
		}
	}
}

func TestValidatePassword(t *testing.T) {
	t.Parallel()
	for pw, ok := range map[string]bool{
		"":                        false,
		"123456789":               false,
		"0123456789":              true,
		"ééééééééé":               false, // 9 characters, 18 bytes
		"éééééééééé":              true,
		strings.Repeat("x", 256):  true,
		strings.Repeat("x", 257):  false,
		"\xff\xfe0123456789abcde": false,
	} {
		if err := ValidatePassword(pw); (err == nil) != ok {
			t.Errorf("ValidatePassword(%q) = %v, want ok=%v", pw, err, ok)
		}
	}
}

func TestCSRFValid(t *testing.T) {
	t.Parallel()
	tok := NewCSRFToken()
	other := NewCSRFToken()
	h := HashToken(tok)
	for _, c := range []struct {
		name           string
		cookie, header string
		want           bool
	}{
		{"match", tok, tok, true},
		{"missing header", tok, "", false},
		{"missing cookie", "", tok, false},
		{"wrong header", tok, other, false},
		// A planted cookie that agrees with the header but was never
		// issued to this session.
		{"planted pair", other, other, false},
	} {
		if got := CSRFValid(c.cookie, c.header, h); got != c.want {
			t.Errorf("%s: got %v", c.name, got)
		}
	}
	if len(NewSessionToken()) != 4+64 || NewSessionToken() == NewSessionToken() {
		t.Error("session tokens are not 256 random bits")
	}
}

// FuzzCredentials checks that validation never panics, that a normalised
// email is a fixed point and stays within bounds, and that any password
// ValidatePassword accepts is at least MinPasswordLen characters.
func FuzzCredentials(f *testing.F) {
	for _, s := range []string{"a@b.co", "Alice <a@b.co>", "x@y", "0123456789", "ééééééééé", "\x00@a.b", "a@b.co.", "(c)a@b.co"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if e, err := NormalizeEmail(s); err == nil {
			if e2, err := NormalizeEmail(e); err != nil || e2 != e {
				t.Fatalf("normalised %q to %q, which normalises to %q, %v", s, e, e2, err)
			}
			if len(e) > maxEmailLen || strings.Count(e, "@") != 1 || e != strings.ToLower(e) {
				t.Fatalf("accepted %q", e)
			}
		}
		if ValidatePassword(s) == nil && (utf8.RuneCountInString(s) < MinPasswordLen || len(s) > MaxPasswordLen) {
			t.Fatalf("accepted password %q", s)
		}
	})
}
