package server

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sdkSignature computes a signed URL's signature the way the e2b SDK's
// getSignature does (signature.ts): "v1_" + base64(sha256(raw)) with the
// padding cut off.
func sdkSignature(path, op, user, token string, expiry string) string {
	raw := path + ":" + op + ":" + user + ":" + token
	if expiry != "" {
		raw += ":" + expiry
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}

func TestSignedFileURLs(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	e := startEnvd(t, Options{Now: func() time.Time { return now }})
	const token = "sign-me"
	if code, body := httpDo(t, "POST", e.url+"/init", "", `{"accessToken":"`+token+`"}`); code != 204 {
		t.Fatalf("POST /init = %d %s", code, body)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "signed.txt")
	if err := os.WriteFile(p, []byte("signed content"), 0o644); err != nil {
		t.Fatal(err)
	}
	later := strconv.FormatInt(now.Unix()+60, 10)
	earlier := strconv.FormatInt(now.Unix()-1, 10)

	read := func(q url.Values, hdr map[string]string) (int, string) {
		t.Helper()
		resp, b := getFile(t, e, q, hdr)
		var he httpError
		if resp.StatusCode != 200 && json.Unmarshal(b, &he) == nil {
			return resp.StatusCode, he.Message
		}
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name string
		q    url.Values
		hdr  map[string]string
		want int
		says string
	}{
		{"signed read", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, "")}}, nil, 200, "signed content"},
		{"signed read as root", url.Values{"path": {p}, "username": {"root"}, "signature": {sdkSignature(p, "read", "root", token, "")}}, nil, 200, "signed content"},
		{"signed read before expiry", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, later)}, "signature_expiration": {later}}, nil, 200, "signed content"},
		// The signature names the user: an Authorization header cannot
		// switch to another (this one does not even exist).
		{"header cannot change the signed user", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, "")}}, map[string]string{"Authorization": basicUser("no-such-user-xyz")}, 200, "signed content"},
		{"expired", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, earlier)}, "signature_expiration": {earlier}}, nil, 401, "expired"},
		{"expiry moved", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, earlier)}, "signature_expiration": {later}}, nil, 401, "does not match"},
		{"expiry dropped", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, later)}}, nil, 401, "does not match"},
		{"other path", url.Values{"path": {p + "x"}, "signature": {sdkSignature(p, "read", "", token, "")}}, nil, 401, p + "x"},
		{"other user", url.Values{"path": {p}, "username": {"root"}, "signature": {sdkSignature(p, "read", "", token, "")}}, nil, 401, `user "root"`},
		{"write signature used to read", url.Values{"path": {p}, "signature": {sdkSignature(p, "write", "", token, "")}}, nil, 401, "read of path"},
		{"wrong token", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", "other", "")}}, nil, 401, "does not match"},
		{"empty signature", url.Values{"path": {p}, "signature": {""}}, nil, 401, "does not match"},
		{"bad expiry", url.Values{"path": {p}, "signature": {"v1_x"}, "signature_expiration": {"soon"}}, nil, 400, "signature_expiration"},
		{"no token, no signature", url.Values{"path": {p}}, nil, 401, "X-Access-Token"},
		// A wrong header is not rescued by a good signature.
		{"wrong header with signature", url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, "")}}, map[string]string{AccessTokenHeader: "nope"}, 401, "wrong access token"},
	} {
		code, body := read(tc.q, tc.hdr)
		if code != tc.want || !strings.Contains(body, tc.says) {
			t.Errorf("%s: GET = %d %q, want %d mentioning %q", tc.name, code, body, tc.want, tc.says)
		}
	}

	// Uploads take a write signature, never a read one.
	up := filepath.Join(dir, "up.txt")
	code, _, body := postFile(t, e, url.Values{"path": {up}, "signature": {sdkSignature(up, "read", "", token, "")}}, "application/octet-stream", strings.NewReader("no"), nil)
	if code != 401 {
		t.Fatalf("upload with a read signature = %d %s", code, body)
	}
	if _, err := os.Stat(up); !os.IsNotExist(err) {
		t.Fatalf("refused upload left %s: %v", up, err)
	}
	code, infos, body := postFile(t, e, url.Values{"path": {up}, "signature": {sdkSignature(up, "write", "", token, "")}}, "application/octet-stream", strings.NewReader("yes"), nil)
	if code != 200 || len(infos) != 1 || infos[0].Path != up {
		t.Fatalf("signed upload = %d %s", code, body)
	}
	if got, _ := os.ReadFile(up); string(got) != "yes" {
		t.Fatalf("signed upload wrote %q", got)
	}

	// Signatures open /files only.
	if code, body := httpDo(t, "GET", e.url+"/envs?path=%2F&signature="+url.QueryEscape(sdkSignature("/", "read", "", token, "")), "", ""); code != 401 {
		t.Fatalf("GET /envs with a signature = %d %s", code, body)
	}

	// A new token voids the URLs signed with the old one.
	if code, body := httpDo(t, "POST", e.url+"/init", token, `{"accessToken":"rotated"}`); code != 204 {
		t.Fatalf("rotate token = %d %s", code, body)
	}
	if code, body := read(url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", token, "")}}, nil); code != 401 {
		t.Fatalf("old signature after rotation = %d %s", code, body)
	}
	if code, body := read(url.Values{"path": {p}, "signature": {sdkSignature(p, "read", "", "rotated", "")}}, nil); code != 200 {
		t.Fatalf("new signature after rotation = %d %s", code, body)
	}
}
