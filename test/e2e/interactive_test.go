package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestInteractive drives the interactive surface through the whole stack
// (API → agent → envd in a real runc sandbox): an exec stream with stdin, a
// background process listed and killed, a terminal that sees its resize,
// 64 MiB up and down with matching digests, file operations and metrics.
func TestInteractive(t *testing.T) {
	s := startStack(t)
	var created sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}, http.StatusAccepted, &created)
	s.waitStatus(created.ID, "running", 60*time.Second)
	base := "/v1/sandboxes/" + created.ID
	t.Cleanup(func() {
		s.mustDo(http.MethodDelete, base, nil, http.StatusAccepted, nil)
		s.waitStatus(created.ID, "stopped", 60*time.Second)
	})

	dial := func(t *testing.T, path string) *websocket.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		u := "ws" + strings.TrimPrefix(s.apiURL, "http") + path
		c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"X-Api-Key": {s.apiKey}}})
		if err != nil {
			t.Fatalf("dial %s: %v (%v)", path, err, resp)
		}
		t.Cleanup(func() { _ = c.CloseNow() })
		return c
	}
	send := func(t *testing.T, c *websocket.Conn, v any) {
		t.Helper()
		b, _ := json.Marshal(v)
		if err := c.Write(context.Background(), websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
	}
	// next reads one frame: a text message decoded, or terminal bytes.
	next := func(t *testing.T, c *websocket.Conn) (map[string]any, []byte) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		typ, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if typ == websocket.MessageBinary {
			return nil, b
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("message %q: %v", b, err)
		}
		return m, nil
	}

	t.Run("exec stream with stdin", func(t *testing.T) {
		c := dial(t, base+"/exec/stream")
		send(t, c, map[string]any{"cmd": "while read l; do echo \"got $l\"; done; echo bye >&2; exit 4"})
		if m, _ := next(t, c); m["type"] != "start" || m["pid"].(float64) <= 0 {
			t.Fatalf("start: %v", m)
		}
		send(t, c, map[string]any{"type": "stdin", "data": base64.StdEncoding.EncodeToString([]byte("one\ntwo\n"))})
		send(t, c, map[string]any{"type": "close_stdin"})
		var stdout, stderr strings.Builder
		for {
			m, _ := next(t, c)
			d, _ := base64.StdEncoding.DecodeString(fmt.Sprint(m["data"]))
			switch m["type"] {
			case "stdout":
				stdout.Write(d)
				continue
			case "stderr":
				stderr.Write(d)
				continue
			case "exit":
				if m["exit_code"] != float64(4) {
					t.Errorf("exit %v", m)
				}
			default:
				t.Fatalf("unexpected %v", m)
			}
			break
		}
		if stdout.String() != "got one\ngot two\n" || stderr.String() != "bye\n" {
			t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
		}
	})

	t.Run("background process listed then killed", func(t *testing.T) {
		var bg struct {
			PID uint32 `json:"pid"`
			Tag string `json:"tag"`
		}
		s.mustDo(http.MethodPost, base+"/exec", map[string]any{"cmd": "sleep 300", "background": true, "tag": "sleeper"}, http.StatusAccepted, &bg)
		if bg.PID == 0 || bg.Tag != "sleeper" {
			t.Fatalf("background: %+v", bg)
		}
		var list struct {
			Processes []struct {
				PID uint32 `json:"pid"`
				Tag string `json:"tag"`
			} `json:"processes"`
		}
		listed := func() bool {
			s.mustDo(http.MethodGet, base+"/processes", nil, http.StatusOK, &list)
			for _, p := range list.Processes {
				if p.PID == bg.PID && p.Tag == "sleeper" {
					return true
				}
			}
			return false
		}
		if !listed() {
			t.Fatalf("pid %d not listed: %+v", bg.PID, list)
		}
		s.mustDo(http.MethodDelete, fmt.Sprintf("%s/processes/%d", base, bg.PID), nil, http.StatusNoContent, nil)
		deadline := time.Now().Add(10 * time.Second)
		for listed() {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d still listed after kill", bg.PID)
			}
			time.Sleep(50 * time.Millisecond)
		}
		var res execResult
		s.mustDo(http.MethodPost, base+"/exec", map[string]any{"cmd": "pgrep -x sleep || echo none"}, http.StatusOK, &res)
		if strings.TrimSpace(res.Stdout) != "none" {
			t.Errorf("sleep still runs inside: %q", res.Stdout)
		}
	})

	t.Run("pty resize", func(t *testing.T) {
		c := dial(t, base+"/pty?cols=80&rows=24&cmd="+url.QueryEscape("stty size; read x; stty size"))
		if m, _ := next(t, c); m["type"] != "start" {
			t.Fatalf("start: %v", m)
		}
		var term bytes.Buffer
		for !strings.Contains(term.String(), "24 80") {
			m, b := next(t, c)
			if m != nil {
				t.Fatalf("before resize: %v (terminal so far %q)", m, term.String())
			}
			term.Write(b)
		}
		send(t, c, map[string]any{"type": "resize", "cols": 132, "rows": 43})
		if err := c.Write(context.Background(), websocket.MessageBinary, []byte("\r")); err != nil {
			t.Fatal(err)
		}
		for {
			m, b := next(t, c)
			if m == nil {
				term.Write(b)
				continue
			}
			if m["type"] != "exit" || m["exit_code"] != float64(0) {
				t.Fatalf("end: %v", m)
			}
			break
		}
		if !strings.Contains(term.String(), "43 132") {
			t.Errorf("terminal after resize: %q", term.String())
		}
	})

	t.Run("64 MiB upload and download", func(t *testing.T) {
		const size = 64 << 20
		up := sha256.New()
		body := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), up)
		req, err := http.NewRequest(http.MethodPut, s.apiURL+base+"/files?path="+url.QueryEscape("/tmp/big/blob.bin"), body)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = size
		req.Header.Set("X-API-Key", s.apiKey)
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload: %d", resp.StatusCode)
		}
		req, _ = http.NewRequest(http.MethodGet, s.apiURL+base+"/files?path="+url.QueryEscape("/tmp/big/blob.bin"), nil)
		req.Header.Set("X-API-Key", s.apiKey)
		resp, err = s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		down := sha256.New()
		n, err := io.Copy(down, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || n != size {
			t.Fatalf("download: %d, %d bytes, %v", resp.StatusCode, n, err)
		}
		if hex.EncodeToString(up.Sum(nil)) != hex.EncodeToString(down.Sum(nil)) {
			t.Fatal("downloaded bytes differ from the uploaded ones")
		}
		var res execResult
		s.mustDo(http.MethodPost, base+"/exec", map[string]any{"cmd": "sha256sum /tmp/big/blob.bin | cut -d' ' -f1"}, http.StatusOK, &res)
		if strings.TrimSpace(res.Stdout) != hex.EncodeToString(up.Sum(nil)) {
			t.Errorf("digest inside %q", res.Stdout)
		}
	})

	t.Run("list mkdir stat remove", func(t *testing.T) {
		s.mustDo(http.MethodPost, base+"/files/mkdir", map[string]any{"path": "/tmp/tree/a/b"}, http.StatusCreated, nil)
		s.mustDo(http.MethodPut, base+"/files?path=/tmp/tree/a/f.txt", "twelve bytes", http.StatusCreated, nil)
		var list struct {
			Entries []struct {
				Path string `json:"path"`
				Type string `json:"type"`
			} `json:"entries"`
		}
		s.mustDo(http.MethodGet, base+"/files/list?path=/tmp/tree&depth=3", nil, http.StatusOK, &list)
		got := map[string]string{}
		for _, e := range list.Entries {
			got[e.Path] = e.Type
		}
		want := map[string]string{"/tmp/tree/a": "dir", "/tmp/tree/a/b": "dir", "/tmp/tree/a/f.txt": "file"}
		for p, typ := range want {
			if got[p] != typ {
				t.Errorf("list: %s is %q, want %q (all %v)", p, got[p], typ, got)
			}
		}
		var st struct {
			Size int64  `json:"size"`
			Type string `json:"type"`
		}
		s.mustDo(http.MethodGet, base+"/files/stat?path=/tmp/tree/a/f.txt", nil, http.StatusOK, &st)
		if st.Size != 12 || st.Type != "file" {
			t.Errorf("stat: %+v", st)
		}
		s.mustDo(http.MethodDelete, base+"/files?path=/tmp/tree", nil, http.StatusNoContent, nil)
		s.mustDo(http.MethodGet, base+"/files/stat?path=/tmp/tree", nil, http.StatusNotFound, nil)
		s.mustDo(http.MethodGet, base+"/files?path=", nil, http.StatusBadRequest, nil)
	})

	// File metadata (the SDKs' files.write metadata option) lives in user
	// extended attributes, which the sandbox's overlay keeps.
	t.Run("file metadata on the overlay", func(t *testing.T) {
		const p = "/home/wrenn-user/meta.txt"
		if code, body := metadataUpload(t, s, created.ID, p); code != http.StatusOK || !strings.Contains(body, `"metadata":{"author":"alice"}`) {
			t.Fatalf("upload with metadata = %d %s", code, body)
		}
		if md := envdStat(t, s, created.ID, p).GetMetadata(); md["author"] != "alice" || len(md) != 1 {
			t.Fatalf("stat metadata = %v", md)
		}
		if res := s.exec(created.ID, `python3 -c "import os; print(os.getxattr('`+p+`', 'user.e2b.author').decode())"`); res.Stdout != "alice\n" {
			t.Fatalf("user.e2b.author inside = %+v", res)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		var m struct {
			Samples []struct {
				Time        time.Time `json:"time"`
				MemoryBytes uint64    `json:"memory_bytes"`
				DiskBytes   uint64    `json:"disk_bytes"`
			} `json:"samples"`
		}
		s.mustDo(http.MethodGet, base+"/metrics", nil, http.StatusOK, &m)
		if len(m.Samples) == 0 || m.Samples[0].MemoryBytes == 0 || m.Samples[len(m.Samples)-1].DiskBytes == 0 {
			t.Fatalf("metrics: %+v", m.Samples)
		}
	})
}
