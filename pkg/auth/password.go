// Package auth holds the credential primitives of the control plane:
// password hashing (argon2id), validation of emails and passwords, and the
// random tokens behind cookie sessions and CSRF protection. It knows no HTTP
// routes and no SQL, so an enterprise module can reuse it as is.
package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// ErrMismatch is returned by VerifyPassword for a wrong password; any other
// error means the stored hash itself is unusable.
var ErrMismatch = errors.New("password does not match")

// Params are argon2id's cost parameters. They are stored inside every hash,
// so raising them later keeps old hashes verifiable.
type Params struct {
	Time    uint32
	Memory  uint32 // KiB
	Threads uint8
	KeyLen  uint32
	SaltLen int
}

// DefaultParams follow RFC 9106's second recommendation (64 MiB, 3 passes),
// which costs a few tens of milliseconds per login on a server core.
var DefaultParams = Params{Time: 3, Memory: 64 * 1024, Threads: 2, KeyLen: 32, SaltLen: 16}

var b64 = base64.RawStdEncoding

// HashPassword returns password hashed with argon2id and a fresh random salt,
// in the PHC string format ($argon2id$v=19$m=…,t=…,p=…$salt$hash).
func HashPassword(password string, p Params) (string, error) {
	salt := make([]byte, p.SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: read salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// Bounds that keep a corrupt or hostile stored hash from costing more than a
// real one could.
const (
	maxMemoryKiB = 1 << 20
	maxTime      = 16
	maxKeyLen    = 128
)

// VerifyPassword reports whether password matches encoded (from
// HashPassword): nil on a match, ErrMismatch on a wrong password. The
// comparison is constant-time.
func VerifyPassword(password, encoded string) error {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return errors.New("verify password: not an argon2id hash")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return fmt.Errorf("verify password: unsupported argon2 version %q", parts[2])
	}
	var m, t uint32
	var threads uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &threads); err != nil {
		return fmt.Errorf("verify password: parse parameters %q: %w", parts[3], err)
	}
	if m == 0 || m > maxMemoryKiB || t == 0 || t > maxTime || threads == 0 {
		return fmt.Errorf("verify password: parameters out of range: %q", parts[3])
	}
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return fmt.Errorf("verify password: decode salt: %w", err)
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil {
		return fmt.Errorf("verify password: decode hash: %w", err)
	}
	if len(want) == 0 || len(want) > maxKeyLen {
		return errors.New("verify password: hash has an impossible length")
	}
	got := argon2.IDKey([]byte(password), salt, t, m, threads, uint32(len(want)))
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrMismatch
	}
	return nil
}
