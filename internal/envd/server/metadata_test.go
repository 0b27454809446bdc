package server

import (
	"bytes"
	"context"
	"mime/multipart"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"connectrpc.com/connect"

	fspb "github.com/wrenn/wrenn/proto/envd/filesystem"
)

func TestUploadMetadata(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := fsClient(e.url)
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "report.txt")
	stat := func(path string) map[string]string {
		t.Helper()
		st, err := c.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: path}))
		if err != nil {
			t.Fatalf("Stat %s: %v", path, err)
		}
		return st.Msg.GetEntry().GetMetadata()
	}

	// Keys arrive lowercased whatever case the client sent them in.
	want := map[string]string{"author": "alice", "purpose": "demo run"}
	code, infos, body := postFile(t, e, url.Values{"path": {p}}, "application/octet-stream", strings.NewReader("v1"),
		map[string]string{"X-Metadata-Author": "alice", "x-metadata-PURPOSE": "demo run"})
	if code != 200 || len(infos) != 1 || !reflect.DeepEqual(infos[0].Metadata, want) {
		t.Fatalf("upload with metadata = %d %s", code, body)
	}
	if got := stat(p); !reflect.DeepEqual(got, want) {
		t.Fatalf("Stat metadata = %v, want %v", got, want)
	}

	// Every RPC that answers with an entry carries it.
	moved := filepath.Join(dir, "sub", "moved.txt")
	mv, err := c.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: p, Destination: moved}))
	if err != nil || !reflect.DeepEqual(mv.Msg.GetEntry().GetMetadata(), want) {
		t.Fatalf("Move entry metadata: %v %v", mv, err)
	}
	ls, err := c.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir, Depth: 2}))
	if err != nil {
		t.Fatal(err)
	}
	var listed map[string]string
	for _, en := range ls.Msg.GetEntries() {
		if en.GetPath() == moved {
			listed = en.GetMetadata()
		}
	}
	if !reflect.DeepEqual(listed, want) {
		t.Fatalf("ListDir metadata of %s = %v, want %v", moved, listed, want)
	}

	// Refused metadata leaves the file as it was: content and metadata.
	for name, hdr := range map[string]map[string]string{
		"non-ASCII value":   {"X-Metadata-Author": "caf\xc3\xa9"},
		"tab in value":      {"X-Metadata-Author": "a\tb"},
		"empty key":         {"X-Metadata-": "v"},
		"overlong key":      {"X-Metadata-" + strings.Repeat("k", 300): "v"},
		"larger than ext4s": {"X-Metadata-Big": strings.Repeat("v", 64<<10)},
	} {
		code, _, body := postFile(t, e, url.Values{"path": {moved}}, "application/octet-stream", strings.NewReader("v2"), hdr)
		if code != 400 {
			t.Errorf("%s: upload = %d %s, want 400", name, code, body)
		}
		if got, _ := os.ReadFile(moved); string(got) != "v1" {
			t.Errorf("%s: refused upload changed the content to %q", name, got)
		}
		if got := stat(moved); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: refused upload changed the metadata to %v", name, got)
		}
	}
	// A refused new file is not left behind.
	if code, _, _ := postFile(t, e, url.Values{"path": {filepath.Join(dir, "new.txt")}}, "application/octet-stream", strings.NewReader("x"), map[string]string{"X-Metadata-Big": strings.Repeat("v", 64<<10)}); code != 400 {
		t.Fatalf("new file with too much metadata = %d", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "new.txt")); !os.IsNotExist(err) {
		t.Fatalf("refused new file left behind: %v", err)
	}

	// Overwriting replaces the metadata: without any, none is left.
	if code, infos, body := postFile(t, e, url.Values{"path": {moved}}, "application/octet-stream", strings.NewReader("v3"), nil); code != 200 || infos[0].Metadata != nil {
		t.Fatalf("overwrite without metadata = %d %s", code, body)
	}
	if got := stat(moved); got != nil {
		t.Fatalf("metadata after overwrite without any: %v", got)
	}

	// A multipart upload gives every file the same metadata.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	for _, name := range []string{"m/a.txt", "m/b.txt"} {
		fw, _ := mw.CreateFormFile("file", filepath.Join(dir, name))
		fw.Write([]byte(name))
	}
	mw.Close()
	code, infos, body = postFile(t, e, nil, mw.FormDataContentType(), &mp, map[string]string{"X-Metadata-Source": "import"})
	if code != 200 || len(infos) != 2 {
		t.Fatalf("multipart upload with metadata = %d %s", code, body)
	}
	for _, name := range []string{"m/a.txt", "m/b.txt"} {
		if got := stat(filepath.Join(dir, name)); !reflect.DeepEqual(got, map[string]string{"source": "import"}) {
			t.Errorf("%s metadata = %v", name, got)
		}
	}
}
