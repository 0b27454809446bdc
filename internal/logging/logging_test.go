package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSetupWritesJSONFileAndTextStderr(t *testing.T) {
	dir := t.TempDir()
	var stderr bytes.Buffer
	log, closeLog, err := Setup(context.Background(), dir, "test", slog.LevelInfo, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hidden")
	log.Info("hello", "sandbox_id", "sb-1")
	closeLog()

	b, err := os.ReadFile(filepath.Join(dir, "logs", "test.log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 1 {
		t.Fatalf("log file has %d lines, want 1 (debug filtered): %q", len(lines), b)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("log line is not JSON: %v", err)
	}
	if rec["msg"] != "hello" || rec["sandbox_id"] != "sb-1" {
		t.Errorf("record = %v", rec)
	}
	if !strings.Contains(stderr.String(), "msg=hello sandbox_id=sb-1") {
		t.Errorf("stderr = %q, want a text record", stderr.String())
	}
}

// TestSIGHUPReopens is what logrotate relies on: after the file is moved
// away and SIGHUP arrives, records go to a new file at the old path.
func TestSIGHUPReopens(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, closeLog, err := Setup(ctx, dir, "rot", slog.LevelInfo, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeLog()
	path := filepath.Join(dir, "logs", "rot.log")
	log.Info("before")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The new file exists a moment before the writer switches to it, so
	// wait until a record lands there.
	deadline := time.Now().Add(5 * time.Second)
	for {
		log.Info("probe")
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), "probe") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reopen the log file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	log.Info("after")
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "before") || strings.Contains(string(old), "after") || !strings.Contains(string(cur), "after") {
		t.Errorf("rotated file %q, new file %q", old, cur)
	}
}

func TestCloseIsSafeBeforeContextEnds(t *testing.T) {
	_, closeLog, err := Setup(context.Background(), t.TempDir(), "c", slog.LevelInfo, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { closeLog(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close blocked while the context was still live")
	}
}
