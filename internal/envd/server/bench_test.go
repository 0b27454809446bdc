package server

import (
	"bytes"
	"context"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
)

// BenchmarkExecTrue is the exec round trip the SDKs pay for
// commands.run("true"): Start over Connect (binary, HTTP/1.1, the SDK's
// transport) until the end event. It reports p50 and p95 besides the mean.
func BenchmarkExecTrue(b *testing.B) {
	e := startEnvd(b, Options{})
	c := processconnect.NewProcessClient(http1Client(), e.url)
	req := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/true"}}
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		s, err := c.Start(ctx, connect.NewRequest(req))
		if err != nil {
			b.Fatalf("Start: %v", err)
		}
		var end *pb.ProcessEvent_EndEvent
		for s.Receive() {
			if ev := s.Msg().GetEvent().GetEnd(); ev != nil {
				end = ev
			}
		}
		if err := s.Err(); err != nil || end == nil || end.GetExitCode() != 0 {
			b.Fatalf("true: end %v, %v", end, err)
		}
		s.Close()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.95), "p95-ms")
}

// BenchmarkFiles64MiB measures /files throughput for one 64 MiB file each
// way, uploaded as the SDKs do (multipart) and downloaded raw.
func BenchmarkFiles64MiB(b *testing.B) {
	const size = 64 << 20
	e := startEnvd(b, Options{})
	p := filepath.Join(b.TempDir(), "bench.bin")
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	target := e.url + "/files?" + url.Values{"path": {p}}.Encode()

	upload := func(b *testing.B) {
		pr, pw := io.Pipe()
		mw := multipart.NewWriter(pw)
		go func() {
			fw, err := mw.CreateFormFile("file", p)
			if err == nil {
				_, err = io.Copy(fw, newPatternReader(size))
			}
			if err == nil {
				err = mw.Close()
			}
			pw.CloseWithError(err)
		}()
		req, _ := http.NewRequest(http.MethodPost, target, pr)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := client.Do(req)
		if err != nil {
			b.Fatalf("upload: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("upload = %d %s", resp.StatusCode, bytes.TrimSpace(body))
		}
	}
	b.Run("upload", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			upload(b)
		}
	})
	b.Run("download", func(b *testing.B) {
		upload(b)
		b.SetBytes(size)
		for b.Loop() {
			resp, err := client.Get(target)
			if err != nil {
				b.Fatalf("download: %v", err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != size {
				b.Fatalf("download: %d bytes, %v", n, err)
			}
		}
	})
}
