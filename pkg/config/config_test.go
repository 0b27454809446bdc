package config

import (
	"strings"
	"testing"
)

func env(m map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"5G", 5e9, false},
		{"2Gi", 2 << 30, false},
		{"1000M", 1e9, false},
		{"512Mi", 512 << 20, false},
		{"4096", 4096, false},
		{" 1Ki ", 1024, false},
		{"", 0, true},
		{"G", 0, true},
		{"5 G", 0, true},
		{"5g", 0, true},
		{"1.5G", 0, true},
		{"-1G", 0, true},
		{"5GB", 0, true},
		{"99999999999999999999", 0, true},
		{"20000000Ti", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseSize(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "size") {
				t.Errorf("error %q does not say what was wrong", err)
			}
		})
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"5G", "2Gi", "1000M", "512Mi", "1", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n == 0 && strings.Trim(strings.TrimSpace(s), "0KMGTiB") != "" {
			t.Fatalf("ParseSize(%q) accepted it as 0", s)
		}
	})
}

func TestLoadControlPlane(t *testing.T) {
	t.Parallel()
	base := map[string]string{"DATABASE_URL": "postgres://u:p@127.0.0.1:5432/w", "REDIS_URL": "redis://127.0.0.1:6379/0"}
	c, err := LoadControlPlane(env(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.Dir != DefaultDir || c.Listen != "127.0.0.1:8080" || c.PublicURL != "http://127.0.0.1:8080" || c.CPUOvercommit != 1.5 || c.MemoryOvercommit != 1 || c.MetricsToken != "" {
		t.Errorf("defaults: %+v", c)
	}
	bad := map[string]string{
		"WRENN_DIR": "relative", "WRENN_CP_LISTEN": "nope", "DATABASE_URL": "mysql://x",
		"REDIS_URL": "", "LOG_LEVEL": "loud", "WRENN_BOOTSTRAP_API_KEY": "wrn_short", "WRENN_CPU_OVERCOMMIT": "0.5",
		"WRENN_MEMORY_OVERCOMMIT": "lots", "WRENN_METRICS_TOKEN": "short",
	}
	_, err = LoadControlPlane(env(bad))
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	// Every problem is named at once, so one start shows them all.
	for _, name := range []string{"WRENN_DIR", "WRENN_CP_LISTEN", "DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "WRENN_BOOTSTRAP_API_KEY", "WRENN_CPU_OVERCOMMIT", "WRENN_MEMORY_OVERCOMMIT", "WRENN_METRICS_TOKEN"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

func TestLoadAgent(t *testing.T) {
	t.Parallel()
	c, err := LoadAgent(env(map[string]string{"WRENN_CP_URL": "http://127.0.0.1:8080", "WRENN_DEFAULT_ROOTFS_SIZE": "2Gi", "WRENN_AGENT_SHUTDOWN": "destroy"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DefaultDiskMB != 2048 || c.Runtime != "auto" || !c.DestroyOnExit || c.SandboxCIDR.String() != "10.88.0.0/16" {
		t.Errorf("agent config %+v", c)
	}
	tests := []struct {
		key, value string
	}{
		{"WRENN_CP_URL", ""},
		{"WRENN_RUNTIME", "docker"},
		{"WRENN_DEFAULT_ROOTFS_SIZE", "5 GB"},
		{"WRENN_DEFAULT_ROOTFS_SIZE", "1Mi"},
		{"WRENN_SANDBOX_CIDR", "10.0.0.0/28"},
		{"WRENN_SANDBOX_CIDR", "fd00::/64"},
		{"WRENN_AGENT_SHUTDOWN", "maybe"},
		{"WRENN_AGENT_LISTEN", "9090"},
		{"WRENN_AGENT_LISTEN", "0.0.0.0:9090"},
		{"WRENN_AGENT_LISTEN", ":9090"},
		{"WRENN_AGENT_LISTEN", "10.1.2.3:9090"},
	}
	for _, tc := range tests {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			m := map[string]string{"WRENN_CP_URL": "http://127.0.0.1:8080", tc.key: tc.value}
			if _, err := LoadAgent(env(m)); err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Errorf("%s=%q: error %v, want one naming %s", tc.key, tc.value, err, tc.key)
			}
		})
	}
}

// Plain HTTP only on loopback; any other listener needs TLS.
func TestAgentListenNeedsTLSBeyondLoopback(t *testing.T) {
	t.Parallel()
	for _, m := range []map[string]string{
		{"WRENN_AGENT_LISTEN": "127.0.0.1:9090"},
		{"WRENN_AGENT_LISTEN": "localhost:9090"},
		{"WRENN_AGENT_LISTEN": "[::1]:9090"},
		{"WRENN_AGENT_LISTEN": "0.0.0.0:9090", "WRENN_AGENT_ADVERTISE_URL": "https://agent1.example:9090"},
	} {
		m["WRENN_CP_URL"] = "http://127.0.0.1:8080"
		if _, err := LoadAgent(env(m)); err != nil {
			t.Errorf("%v: %v", m, err)
		}
	}
}
