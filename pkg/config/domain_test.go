package config

import (
	"strings"
	"testing"
)

func TestControlPlaneDomain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value, want string
		ok          bool
	}{
		{"", "", true},
		{"sandbox.localhost", "sandbox.localhost", true},
		{"Sandbox.Example.COM.", "sandbox.example.com", true},
		{"http://sandbox.localhost", "", false},
		{"sandbox.localhost:8080", "", false},
		{"sandbox..localhost", "", false},
		{"-bad.localhost", "", false},
		{"under_score.localhost", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			c, err := LoadControlPlane(env(map[string]string{
				"DATABASE_URL": "postgres://u:p@127.0.0.1:5432/w", "REDIS_URL": "redis://127.0.0.1:6379/0", "WRENN_DOMAIN": tc.value,
			}))
			if !tc.ok {
				if err == nil || !strings.Contains(err.Error(), "WRENN_DOMAIN") {
					t.Fatalf("accepted %q: %v", tc.value, err)
				}
				return
			}
			if err != nil || c.Domain != tc.want {
				t.Fatalf("Domain = %q, %v; want %q", c.Domain, err, tc.want)
			}
		})
	}
}
