package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/envdclient"
	fspb "github.com/wrenn/wrenn/proto/envd/filesystem"
	"github.com/wrenn/wrenn/proto/envd/filesystem/filesystemconnect"
)

// metadataUpload writes path in the sandbox through its envd directly, as
// the e2b SDK does with files.write(path, data, {metadata}), with the
// metadata author=alice, and returns envd's status and body.
func metadataUpload(t *testing.T, s *stack, sandboxID, path string) (int, string) {
	t.Helper()
	rec := agentRecord(t, s, sandboxID)
	u := "http://" + net.JoinHostPort(rec.Link.GuestIP.String(), strconv.Itoa(envdclient.Port)) + "/files?path=" + url.QueryEscape(path)
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader("with metadata"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Access-Token", rec.Token)
	req.Header.Set("X-Metadata-Author", "alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("upload %s with metadata: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// envdStat stats path through the sandbox's envd; a nil entry means it
// does not exist.
func envdStat(t *testing.T, s *stack, sandboxID, path string) *fspb.EntryInfo {
	t.Helper()
	rec := agentRecord(t, s, sandboxID)
	c := filesystemconnect.NewFilesystemClient(http.DefaultClient, "http://"+net.JoinHostPort(rec.Link.GuestIP.String(), strconv.Itoa(envdclient.Port)))
	req := connect.NewRequest(&fspb.StatRequest{Path: path})
	req.Header().Set("X-Access-Token", rec.Token)
	res, err := c.Stat(context.Background(), req)
	if connect.CodeOf(err) == connect.CodeNotFound {
		return nil
	}
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return res.Msg.GetEntry()
}
