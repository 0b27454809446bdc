package config

import (
	"strings"
	"testing"
)

func cliTestEnv(m map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadCLI(t *testing.T) {
	t.Parallel()
	const key = "wrn_0123456789abcdef0123456789abcdef"
	tests := []struct {
		name    string
		env     map[string]string
		want    CLI
		wantErr []string
	}{
		{"both set", map[string]string{"WRENN_API_URL": "http://127.0.0.1:8080/", "WRENN_API_KEY": key}, CLI{"http://127.0.0.1:8080", key}, nil},
		{"nothing set", map[string]string{}, CLI{}, []string{"WRENN_API_URL is not set", "WRENN_API_KEY is not set", "make run"}},
		{"bad url", map[string]string{"WRENN_API_URL": "127.0.0.1:8080", "WRENN_API_KEY": key}, CLI{}, []string{"WRENN_API_URL"}},
		{"bad key", map[string]string{"WRENN_API_URL": "https://wrenn.example", "WRENN_API_KEY": "sk-123"}, CLI{}, []string{"WRENN_API_KEY does not look like"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := LoadCLI(cliTestEnv(tt.env))
			if len(tt.wantErr) == 0 {
				if err != nil || got != tt.want {
					t.Fatalf("LoadCLI = %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadCLI = %+v, want an error", got)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoadDev(t *testing.T) {
	t.Parallel()
	c, err := LoadDev(cliTestEnv(map[string]string{}))
	if err != nil {
		t.Fatal(err)
	}
	want := Dev{Dir: DefaultDir, APIListen: "127.0.0.1:8080", AgentListen: "127.0.0.1:9090", PostgresPort: 15432, RedisPort: 16379, LogLevel: "info"}
	if c != want {
		t.Errorf("defaults %+v, want %+v", c, want)
	}
	if c.APIURL() != "http://127.0.0.1:8080" || c.AgentURL() != "http://127.0.0.1:9090" || c.Sub("dev", "x") != DefaultDir+"/dev/x" {
		t.Errorf("derived values: %s %s %s", c.APIURL(), c.AgentURL(), c.Sub("dev", "x"))
	}
	c, err = LoadDev(cliTestEnv(map[string]string{"WRENN_DIR": "/srv/w", "WRENN_CP_LISTEN": "0.0.0.0:8081", "WRENN_DEV_REDIS_PORT": "7000"}))
	if err != nil || c.Dir != "/srv/w" || c.RedisPort != 7000 || c.APIURL() != "http://127.0.0.1:8081" {
		t.Errorf("overrides: %+v %v", c, err)
	}
	for name, env := range map[string]map[string]string{
		"relative dir":     {"WRENN_DIR": "state"},
		"port not number":  {"WRENN_DEV_POSTGRES_PORT": "x"},
		"port range":       {"WRENN_DEV_REDIS_PORT": "70000"},
		"same listen":      {"WRENN_AGENT_LISTEN": "127.0.0.1:8080"},
		"same ports":       {"WRENN_DEV_REDIS_PORT": "15432"},
		"unknown loglevel": {"LOG_LEVEL": "loud"},
	} {
		if _, err := LoadDev(cliTestEnv(env)); err == nil {
			t.Errorf("%s: LoadDev accepted %v", name, env)
		}
	}
}
