package server

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func postFile(t *testing.T, e *testEnvd, query url.Values, contentType string, body io.Reader, hdr map[string]string) (int, []fileInfo, string) {
	t.Helper()
	req, err := http.NewRequest("POST", e.url+"/files?"+query.Encode(), body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var infos []fileInfo
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(raw, &infos); err != nil {
			t.Fatalf("upload answer %q: %v", raw, err)
		}
	}
	return resp.StatusCode, infos, string(raw)
}

func getFile(t *testing.T, e *testEnvd, query url.Values, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", e.url+"/files?"+query.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	// A bare transport: no transparent gzip, so the test sees the wire.
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestFilesUploadAndDownload(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	dir := t.TempDir()
	content := append([]byte("binary\x00\xff data "), bytes.Repeat([]byte("x"), 100000)...)

	// Raw body into a directory that does not exist yet.
	p := filepath.Join(dir, "new/sub/raw.bin")
	code, infos, body := postFile(t, e, url.Values{"path": {p}}, "application/octet-stream", bytes.NewReader(content), nil)
	if code != 200 || len(infos) != 1 || !reflect.DeepEqual(infos[0], fileInfo{Name: "raw.bin", Type: "file", Path: p}) {
		t.Fatalf("octet-stream upload = %d %s", code, body)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, content) {
		t.Fatalf("written %d bytes, want %d", len(got), len(content))
	}

	// Gzip-encoded body overwrites in place and keeps the file's mode.
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("short"))
	zw.Close()
	if code, _, body := postFile(t, e, url.Values{"path": {p}}, "application/octet-stream", &gz, map[string]string{"Content-Encoding": "gzip"}); code != 200 {
		t.Fatalf("gzip upload = %d %s", code, body)
	}
	if got, _ := os.ReadFile(p); string(got) != "short" {
		t.Fatalf("after gzip upload: %q", got)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("overwrite changed mode to %v", fi.Mode())
	}

	// Multipart with several files named by their part file names.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	for name, data := range map[string]string{filepath.Join(dir, "m/a.txt"): "A", filepath.Join(dir, "m/b.txt"): "B"} {
		fw, _ := mw.CreateFormFile("file", name)
		fw.Write([]byte(data))
	}
	mw.Close()
	code, infos, body = postFile(t, e, nil, mw.FormDataContentType(), &mp, nil)
	if code != 200 || len(infos) != 2 {
		t.Fatalf("multipart upload = %d %s", code, body)
	}
	for name, want := range map[string]string{"m/a.txt": "A", "m/b.txt": "B"} {
		if got, _ := os.ReadFile(filepath.Join(dir, name)); string(got) != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}

	// Download: plain, range, gzip.
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	resp, got := getFile(t, e, url.Values{"path": {p}}, nil)
	if resp.StatusCode != 200 || !bytes.Equal(got, content) {
		t.Fatalf("GET = %d, %d bytes", resp.StatusCode, len(got))
	}
	resp, got = getFile(t, e, url.Values{"path": {p}}, map[string]string{"Range": "bytes=0-5"})
	if resp.StatusCode != 206 || string(got) != "binary" {
		t.Fatalf("range GET = %d %q", resp.StatusCode, got)
	}
	resp, got = getFile(t, e, url.Values{"path": {p}}, map[string]string{"Accept-Encoding": "gzip"})
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip GET = %d %v", resp.StatusCode, resp.Header)
	}
	zr, err := gzip.NewReader(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := io.ReadAll(zr); !bytes.Equal(plain, content) {
		t.Fatalf("gunzipped %d bytes, want %d", len(plain), len(content))
	}
	// Not compressed: a range, a file too small to gain, and bytes that do
	// not compress, each sent as they are.
	random := make([]byte, 256<<10)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	small, noise := filepath.Join(dir, "small.txt"), filepath.Join(dir, "noise.bin")
	if err := os.WriteFile(small, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(noise, random, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		path    string
		headers map[string]string
		code    int
		want    []byte
	}{
		{"range", p, map[string]string{"Accept-Encoding": "gzip", "Range": "bytes=0-5"}, 206, []byte("binary")},
		{"small", small, map[string]string{"Accept-Encoding": "gzip"}, 200, []byte("hello")},
		{"incompressible", noise, map[string]string{"Accept-Encoding": "gzip"}, 200, random},
	} {
		resp, got := getFile(t, e, url.Values{"path": {tc.path}}, tc.headers)
		if resp.StatusCode != tc.code || resp.Header.Get("Content-Encoding") != "" || !bytes.Equal(got, tc.want) {
			t.Errorf("%s GET = %d %v, %d bytes; want %d, not encoded, %d bytes", tc.name, resp.StatusCode, resp.Header, len(got), tc.code, len(tc.want))
		}
	}

	// Errors carry the status the SDKs map.
	tests := []struct {
		name  string
		query url.Values
		want  int
	}{
		{"missing file", url.Values{"path": {filepath.Join(dir, "nope")}}, 404},
		{"directory", url.Values{"path": {dir}}, 400},
		{"no path", url.Values{}, 400},
		{"unknown user", url.Values{"path": {p}, "username": {"no-such-user-xyz"}}, 400},
	}
	for _, tc := range tests {
		if resp, body := getFile(t, e, tc.query, nil); resp.StatusCode != tc.want {
			t.Errorf("GET %s = %d %s, want %d", tc.name, resp.StatusCode, body, tc.want)
		}
	}
	if code, _, body := postFile(t, e, url.Values{"path": {dir}}, "application/octet-stream", bytes.NewReader([]byte("x")), nil); code != 400 {
		t.Errorf("upload onto a directory = %d %s", code, body)
	}
	if code, _, body := postFile(t, e, url.Values{"path": {filepath.Join(dir, "bad.gz")}}, "application/octet-stream", bytes.NewReader([]byte("not gzip")), map[string]string{"Content-Encoding": "gzip"}); code != 400 {
		t.Errorf("bad gzip = %d %s", code, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.gz")); !os.IsNotExist(err) {
		t.Errorf("failed upload left a file: %v", err)
	}
}
