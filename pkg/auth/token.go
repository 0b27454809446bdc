package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"

	"github.com/wrenn/wrenn/pkg/id"
)

// Cookie and header names of dashboard sessions.
const (
	SessionCookie = "wrenn_session"
	CSRFCookie    = "wrenn_csrf"
	CSRFHeader    = "X-CSRF-Token"
)

// NewSessionToken returns a session token: wrs_ plus 256 random bits in hex.
func NewSessionToken() string { return "wrs_" + id.Secret(32) }

// NewCSRFToken returns a CSRF token: 256 random bits in hex.
func NewCSRFToken() string { return id.Secret(32) }

// HashToken is how session and CSRF tokens are stored: hex SHA-256. The
// tokens carry 256 random bits, so no salt or slow hash is needed.
func HashToken(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// CSRFValid reports whether a non-GET cookie-authenticated request carries
// the session's CSRF token in both the cookie and the header (double
// submit), and whether that token is the one issued to the session
// (wantHash, from HashToken), so a cookie planted by a sibling subdomain does
// not pass. Comparisons are constant-time.
func CSRFValid(cookie, header, wantHash string) bool {
	if cookie == "" || header == "" {
		return false
	}
	same := subtle.ConstantTimeCompare([]byte(cookie), []byte(header)) == 1
	bound := subtle.ConstantTimeCompare([]byte(HashToken(header)), []byte(wantHash)) == 1
	return same && bound
}
