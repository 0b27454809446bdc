// Package sdkbench is what the benchmarks that drive envd through the e2b
// SDK share: running bench.mjs, collecting each envd's figures over
// iterations and reporting Wrenn's beside E2B's with the ratios issue 3
// sets targets for. test/e2bsdk runs the envds standalone on the host,
// test/e2e inside one runc sandbox.
package sdkbench

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// E2BEnvdVar names the environment variable that points the benchmarks at
// a built binary of E2B's own envd (github.com/e2b-dev/infra,
// packages/envd), to measure it beside Wrenn's in the same run. Nothing in
// this repository fetches or builds it; docs/architecture.md says how.
const E2BEnvdVar = "WRENN_E2B_ENVD"

// Metric is one figure: its key in a run's results and its unit in the
// benchmark's report.
type Metric struct{ Key, Unit string }

// Metrics are the figures bench.mjs prints, in report order.
var Metrics = []Metric{
	{Key: "execP50Ms", Unit: "exec-p50-ms"},
	{Key: "execP95Ms", Unit: "exec-p95-ms"},
	{Key: "uploadMiBps", Unit: "upload-MiB/s"},
	{Key: "downloadMiBps", Unit: "download-MiB/s"},
	{Key: "gzipCeilingMiBps", Unit: "node-gzip-ceiling-MiB/s"},
}

// Target is one envd a benchmark drives: its name and URL, its idle RSS
// and what every iteration measured.
type Target struct {
	Name    string
	URL     string
	IdleKiB int
	Runs    []map[string]float64
}

// Median of what the runs of t measured for key.
func (t *Target) Median(key string) float64 {
	v := make([]float64, 0, len(t.Runs))
	for _, r := range t.Runs {
		v = append(v, r[key])
	}
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Size is the file size of the throughput figures; bench.mjs moves as many
// bytes.
const Size = 64 << 20

// Pattern returns Size bytes, zero but for byte(i) at every multiple i of
// 4096, as bench.mjs writes them.
func Pattern() []byte {
	data := make([]byte, Size)
	for i := 0; i < len(data); i += 4096 {
		data[i] = byte(i)
	}
	return data
}

// GzipCeiling serves Pattern gzipped at the fastest level (envd's) with
// Content-Encoding: gzip from this process, compressed once beforehand, and
// returns the environment entry that points bench.mjs at it. What bench.mjs
// reads from it is the fastest gzip download the SDK's fetch can take.
func GzipCeiling(b *testing.B) string {
	b.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := zw.Write(Pattern()); err != nil {
		b.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		b.Fatal(err)
	}
	body := buf.Bytes()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	return "WRENN_E2BSDK_GZIP_URL=" + srv.URL + "/"
}

// RunScript runs bench.mjs in dir (beside its node_modules) once against
// the envd at url, with env added to the environment (user, token,
// scratch directory), and returns what it printed.
func RunScript(ctx context.Context, b *testing.B, node, dir, url string, env ...string) map[string]float64 {
	b.Helper()
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "bench.mjs"))
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "E2B_DEBUG=true", "E2B_SANDBOX_URL="+url), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("bench.mjs against %s: %v\n%s%s", url, err, out, stderr.Bytes())
	}
	var res map[string]float64
	if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil {
		b.Fatalf("bench.mjs against %s printed %q: %v", url, out, err)
	}
	for _, m := range Metrics {
		if _, ok := res[m.Key]; !ok {
			b.Fatalf("bench.mjs against %s printed no %s: %q", url, m.Key, out)
		}
	}
	return res
}

// Report reports Wrenn's medians of metrics and idle RSS and, when e2b is
// not nil, E2B's beside them (units prefixed "e2b-"), the Wrenn/E2B ratios
// of issue 3's targets (exec p50 at most 0.5, upload and download at least
// 2) and a table of both sides in the log.
func Report(b *testing.B, wrenn, e2b *Target, metrics []Metric, setting string) {
	b.Helper()
	for _, m := range metrics {
		b.ReportMetric(wrenn.Median(m.Key), m.Unit)
	}
	b.ReportMetric(float64(wrenn.IdleKiB)/1024, "idle-RSS-MiB")
	if e2b == nil {
		return
	}
	for _, m := range metrics {
		b.ReportMetric(e2b.Median(m.Key), "e2b-"+m.Unit)
	}
	b.ReportMetric(float64(e2b.IdleKiB)/1024, "e2b-idle-RSS-MiB")
	b.ReportMetric(wrenn.Median("execP50Ms")/e2b.Median("execP50Ms"), "exec-p50-wrenn/e2b")
	b.ReportMetric(wrenn.Median("uploadMiBps")/e2b.Median("uploadMiBps"), "upload-wrenn/e2b")
	b.ReportMetric(wrenn.Median("downloadMiBps")/e2b.Median("downloadMiBps"), "download-wrenn/e2b")
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "median of %d iteration(s), %s\n", len(wrenn.Runs), setting)
	fmt.Fprintf(&tbl, "%-20s %10s %10s %8s\n", "", "wrenn", "e2b", "w/e")
	for _, m := range metrics {
		w, e := wrenn.Median(m.Key), e2b.Median(m.Key)
		fmt.Fprintf(&tbl, "%-20s %10.1f %10.1f %8.2f\n", m.Unit, w, e, w/e)
	}
	w, e := float64(wrenn.IdleKiB)/1024, float64(e2b.IdleKiB)/1024
	fmt.Fprintf(&tbl, "%-20s %10.1f %10.1f %8.2f", "idle-RSS-MiB", w, e, w/e)
	b.Log(tbl.String())
}

// LoadAvg is /proc/loadavg's first three fields, for the log: the machine
// may be shared, and the figures move with its load.
func LoadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return strings.TrimSpace(string(data))
	}
	return strings.Join(f[:3], " ")
}
