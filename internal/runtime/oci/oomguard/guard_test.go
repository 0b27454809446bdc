package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestMemUsed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    int64
		wantErr bool
	}{
		{"gvisor", "MemTotal:          49152 kB\nMemFree:           46152 kB\nMemAvailable:      46152 kB\n", 3000 << 10, false},
		{"over the total reads as all used", "MemTotal: 49152 kB\nMemFree: 0 kB\n", 49152 << 10, false},
		{"free above total is none used", "MemTotal: 10 kB\nMemFree: 20 kB\n", 0, false},
		{"order does not matter", "MemFree: 1 kB\nCached: 5 kB\nMemTotal: 3 kB\n", 2 << 10, false},
		{"no MemFree", "MemTotal: 49152 kB\n", 0, true},
		{"empty", "", 0, true},
		{"not kB", "MemTotal: 49152 MB\nMemFree: 1 kB\n", 0, true},
		{"not a number", "MemTotal: lots kB\nMemFree: 1 kB\n", 0, true},
		{"negative", "MemTotal: -5 kB\nMemFree: 1 kB\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := memUsed([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("memUsed = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzMemUsed(f *testing.F) {
	f.Add([]byte("MemTotal: 49152 kB\nMemFree: 46152 kB\n"))
	f.Add([]byte("MemTotal:\nMemFree: x kB"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if used, err := memUsed(b); err == nil && used < 0 {
			t.Fatalf("memUsed(%q) = %d, negative", b, used)
		}
	})
}

// fakeProc writes a /proc with one directory per process: pid → resident
// pages, oom_score_adj and comm.
type proc struct {
	rssPages int64
	adj      string
	comm     string
}

func fakeProc(t *testing.T, procs map[int]proc) string {
	t.Helper()
	root := t.TempDir()
	for pid, p := range procs {
		dir := filepath.Join(root, strconv.Itoa(pid))
		files := map[string]string{
			"statm":         "1000 " + strconv.FormatInt(p.rssPages, 10) + " 10 1 0 50 0\n",
			"oom_score_adj": p.adj + "\n",
			"comm":          p.comm + "\n",
			"stat":          strconv.Itoa(pid) + " (" + p.comm + ") S 1 1 1 0",
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Not processes: must be ignored.
	if err := os.WriteFile(filepath.Join(root, "meminfo"), []byte("MemTotal: 1 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestPick(t *testing.T) {
	t.Parallel()
	page := int64(os.Getpagesize())
	tests := []struct {
		name    string
		procs   map[int]proc
		want    int
		wantErr error
	}{
		{
			name: "largest resident set",
			procs: map[int]proc{
				1: {rssPages: 900, adj: "0", comm: "oomguard"},
				2: {rssPages: 800, adj: "0", comm: "sh"},
				7: {rssPages: 300, adj: "0", comm: "sleep"},
				9: {rssPages: 5000, adj: "0", comm: "awk"},
			},
			want: 9,
		},
		{
			name: "the guard and the init are never chosen",
			procs: map[int]proc{
				1: {rssPages: 90000, adj: "0", comm: "oomguard"},
				2: {rssPages: 80000, adj: "0", comm: "envd"},
				5: {rssPages: 10, adj: "0", comm: "sleep"},
			},
			want: 5,
		},
		{
			name: "oom_score_adj -1000 is unkillable",
			procs: map[int]proc{
				4: {rssPages: 90000, adj: "-1000", comm: "precious"},
				5: {rssPages: 10, adj: "-999", comm: "cheap"},
			},
			want: 5,
		},
		{
			name: "oom_score_adj weighs in thousandths of the limit",
			procs: map[int]proc{
				// limit 1000 pages: +100 adds 100 pages, -500 takes 500.
				4: {rssPages: 350, adj: "-500", comm: "shielded"},
				5: {rssPages: 200, adj: "100", comm: "user"},
				6: {rssPages: 250, adj: "0", comm: "plain"},
			},
			want: 5,
		},
		{
			name:    "nothing eligible",
			procs:   map[int]proc{1: {rssPages: 5, adj: "0", comm: "oomguard"}, 2: {rssPages: 5, adj: "0", comm: "sh"}, 3: {rssPages: 5, adj: "-1000", comm: "x"}},
			wantErr: errNoVictim,
		},
		{
			name:    "no memory held is nothing to free",
			procs:   map[int]proc{3: {rssPages: 0, adj: "0", comm: "zombie"}},
			wantErr: errNoVictim,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := &guard{proc: fakeProc(t, tt.procs), limit: 1000 * page, protect: map[int]bool{1: true, 2: true}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			v, err := g.pick()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("pick error %v, want %v", err, tt.wantErr)
			}
			if v.pid != tt.want {
				t.Fatalf("pick = %+v, want pid %d", v, tt.want)
			}
			if err == nil && (v.rss != tt.procs[tt.want].rssPages*page || v.comm != tt.procs[tt.want].comm) {
				t.Fatalf("pick = %+v, want rss %d comm %q", v, tt.procs[tt.want].rssPages*page, tt.procs[tt.want].comm)
			}
		})
	}
}

func TestPickSkipsVanishedAndMalformed(t *testing.T) {
	t.Parallel()
	root := fakeProc(t, map[int]proc{8: {rssPages: 50, adj: "0", comm: "ok"}})
	// A process that exited between the directory read and the file reads,
	// and one whose statm is garbage.
	if err := os.Mkdir(filepath.Join(root, "20"), 0o755); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(root, "21")
	if err := os.Mkdir(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"statm": "x y", "oom_score_adj": "0", "comm": "bad"} {
		if err := os.WriteFile(filepath.Join(bad, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	g := &guard{proc: root, limit: 1, protect: map[int]bool{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	v, err := g.pick()
	if err != nil || v.pid != 8 {
		t.Fatalf("pick = %+v, %v; want pid 8", v, err)
	}
}

func TestStatState(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want byte
		err  bool
	}{
		{"12 (sh) S 1 1 1", 'S', false},
		{"12 (a) b) (c) Z 1 1", 'Z', false},
		{"12 (sh)", 0, true},
		{"garbage", 0, true},
	}
	for _, tt := range tests {
		got, err := statState([]byte(tt.in))
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("statState(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestAlive(t *testing.T) {
	t.Parallel()
	root := fakeProc(t, map[int]proc{3: {rssPages: 1, adj: "0", comm: "sleep"}})
	zombie := filepath.Join(root, "4")
	if err := os.Mkdir(zombie, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(zombie, "stat"), []byte("4 (awk) Z 1 1 1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !alive(root, 3) {
		t.Error("a sleeping process is not alive")
	}
	if alive(root, 4) {
		t.Error("a zombie is alive: its memory is already freed")
	}
	if alive(root, 5) {
		t.Error("a missing process is alive")
	}
}
