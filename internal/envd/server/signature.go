package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Signed /files URLs let a holder of the access token hand out one file's
// download or upload without the token: E2B's SDKs make them with
// downloadUrl and uploadUrl for browsers and other programs. The URL carries
// the query parameters below; the signature binds the path, the operation,
// the user and the expiry to the token, so none of them can be changed.
const (
	signatureParam       = "signature"
	signatureExpiryParam = "signature_expiration"

	signedRead  = "read"
	signedWrite = "write"
)

// errSignature is a signature that does not authorise the request.
var errSignature = errors.New("signed URL refused")

// signedOp returns the operation a signed URL would authorise for r: read
// for GET /files, write for POST /files, and "" for every other request,
// which only the token header can authorise.
func signedOp(r *http.Request) string {
	if r.URL.Path != "/files" {
		return ""
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return signedRead
	case http.MethodPost:
		return signedWrite
	}
	return ""
}

// fileSignature is the signature of a /files URL as E2B's SDKs compute it:
// "v1_" and the unpadded standard base64 of the SHA-256 of
// path:operation:user:token, with ":expiry" appended when the URL expires.
// user is "" when the URL acts as the default user.
func fileSignature(token []byte, path, op, user string, expiry *int64) string {
	h := sha256.New()
	h.Write([]byte(path + ":" + op + ":" + user + ":"))
	h.Write(token)
	if expiry != nil {
		h.Write([]byte(":" + strconv.FormatInt(*expiry, 10)))
	}
	return "v1_" + base64.RawStdEncoding.EncodeToString(h.Sum(nil))
}

// checkSignature verifies the signed URL of r for op against token at now.
// Errors wrap errInvalid for a malformed expiry and errSignature for a
// signature that does not match or has expired.
func checkSignature(r *http.Request, op string, token []byte, now time.Time) error {
	q := r.URL.Query()
	got := q.Get(signatureParam)
	path, user := q.Get("path"), q.Get("username")
	var expiry *int64
	if v := q.Get(signatureExpiryParam); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%w: %s %q is not a Unix time in seconds", errInvalid, signatureExpiryParam, v)
		}
		expiry = &n
	}
	want := fileSignature(token, path, op, user, expiry)
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return fmt.Errorf("%w: the signature does not match a %s of path %q as user %q; sign the URL again with the sandbox's current access token", errSignature, op, path, user)
	}
	if expiry != nil && now.Unix() > *expiry {
		return fmt.Errorf("%w: the URL expired at %s; ask for a new one", errSignature, time.Unix(*expiry, 0).UTC().Format(time.RFC3339))
	}
	return nil
}
