package config

import (
	"strings"
	"testing"
)

func TestCASettings(t *testing.T) {
	t.Parallel()
	base := map[string]string{"DATABASE_URL": "postgres://u:p@127.0.0.1/db", "REDIS_URL": "redis://127.0.0.1:6379/0"}
	for _, tc := range []struct {
		name       string
		cert, key  string
		wantErr    bool
		wantCert   string
		wantKeyLen int
	}{
		{"generated", "", "", false, "", 0},
		{"configured", "/etc/wrenn/ca.pem", "/etc/wrenn/ca.key", false, "/etc/wrenn/ca.pem", len("/etc/wrenn/ca.key")},
		{"cert without key", "/etc/wrenn/ca.pem", "", true, "", 0},
		{"key without cert", "", "/etc/wrenn/ca.key", true, "", 0},
	} {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		if tc.cert != "" {
			m["WRENN_CA_CERT"] = tc.cert
		}
		if tc.key != "" {
			m["WRENN_CA_KEY"] = tc.key
		}
		c, err := LoadControlPlane(env(m))
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err %v", tc.name, err)
			continue
		}
		if err != nil {
			if !strings.Contains(err.Error(), "WRENN_CA_CERT") {
				t.Errorf("%s: error does not name the setting: %v", tc.name, err)
			}
			continue
		}
		if c.CACertFile != tc.wantCert || len(c.CAKeyFile) != tc.wantKeyLen {
			t.Errorf("%s: got %q %q", tc.name, c.CACertFile, c.CAKeyFile)
		}
	}
}

func TestAgentTLSFollowsAdvertiseURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"", false},
		{"http://10.0.0.1:9090", false},
		{"https://10.0.0.1:9090", true},
		{"HTTPS://agent.example:9090", true},
	} {
		m := map[string]string{"WRENN_CP_URL": "http://127.0.0.1:8080"}
		if tc.url != "" {
			m["WRENN_AGENT_ADVERTISE_URL"] = tc.url
		}
		c, err := LoadAgent(env(m))
		if err != nil {
			t.Fatalf("%q: %v", tc.url, err)
		}
		if c.TLS != tc.want {
			t.Errorf("advertise %q: TLS %v, want %v", tc.url, c.TLS, tc.want)
		}
	}
}
