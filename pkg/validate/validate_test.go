package validate

import (
	"errors"
	"strings"
	"testing"
)

func TestValidators(t *testing.T) {
	t.Parallel()
	long := func(n int) string { return strings.Repeat("a", n) }
	meta := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m["k"+strings.Repeat("x", i)] = "v"
		}
		return m
	}
	for _, c := range []struct {
		name  string
		err   error
		field string // "" means valid
	}{
		{"name ok", Name("name", "host-1 (rack 3)", 100), ""},
		{"name empty", Name("name", "", 100), "name"},
		{"name long", Name("name", long(101), 100), "name"},
		{"name control", Name("name", "a\nb", 100), "name"},
		{"name bad utf8", Name("name", "a\xffb", 100), "name"},
		{"path abs", SandboxPath("path", "/home/user/x"), ""},
		{"path rel", SandboxPath("path", "notes/x.txt"), ""},
		{"path empty", SandboxPath("path", ""), "path"},
		{"path nul", SandboxPath("path", "/a\x00b"), "path"},
		{"path long", SandboxPath("path", "/"+long(MaxPath)), "path"},
		{"range ok", Range("vcpus", 2, 1, 8), ""},
		{"range low", Range("vcpus", 0, 1, 8), "vcpus"},
		{"range high", Range("vcpus", 9, 1, 8), "vcpus"},
		{"metadata ok", Metadata("metadata", map[string]string{"owner": "ana", "app": "ci/α"}), ""},
		{"metadata nil", Metadata("metadata", nil), ""},
		{"metadata many", Metadata("metadata", meta(MaxMapEntries+1)), "metadata"},
		{"metadata empty key", Metadata("metadata", map[string]string{"": "x"}), "metadata"},
		{"metadata long value", Metadata("metadata", map[string]string{"k": long(MaxMetaValue + 1)}), "metadata.k"},
		{"metadata control value", Metadata("metadata", map[string]string{"k": "a\tb"}), "metadata.k"},
		{"env ok", Env("env", map[string]string{"PATH": "/bin", "_x1": "a=b c\nd"}), ""},
		{"env digit first", Env("env", map[string]string{"1X": "v"}), "env"},
		{"env dash", Env("env", map[string]string{"A-B": "v"}), "env"},
		{"env equals", Env("env", map[string]string{"A=B": "v"}), "env"},
		{"env nul value", Env("env", map[string]string{"A": "x\x00"}), "env.A"},
		{"env long value", Env("env", map[string]string{"A": long(MaxEnvValue + 1)}), "env.A"},
	} {
		var fe *FieldError
		switch {
		case c.field == "" && c.err != nil:
			t.Errorf("%s: %v", c.name, c.err)
		case c.field != "" && !errors.As(c.err, &fe):
			t.Errorf("%s: got %v, want a FieldError for %s", c.name, c.err, c.field)
		case c.field != "" && (fe.Field != c.field || fe.Msg == ""):
			t.Errorf("%s: field %q msg %q, want field %q", c.name, fe.Field, fe.Msg, c.field)
		}
	}
}

func TestDisplayName(t *testing.T) {
	t.Parallel()
	if got, err := DisplayName("name", "  Ana's key  "); err != nil || got != "Ana's key" {
		t.Errorf("got %q, %v", got, err)
	}
	if got, err := DisplayName("name", ""); err != nil || got != "" {
		t.Errorf("empty: %q, %v", got, err)
	}
	for _, bad := range []string{strings.Repeat("é", MaxDisplayName+1), "a\x7fb", "a\u0085b", "\xff"} {
		if _, err := DisplayName("name", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzEnv(f *testing.F) {
	for _, s := range []string{"PATH", "_", "A1", "1A", "A-B", "", "é"} {
		f.Add(s, "v")
	}
	f.Fuzz(func(t *testing.T, k, v string) {
		err := Env("env", map[string]string{k: v})
		if err != nil {
			return
		}
		// What passes is exportable by a POSIX shell: sh -c 'export K=V'.
		if k == "" || len(k) > MaxKey || (k[0] >= '0' && k[0] <= '9') || strings.ContainsRune(v, 0) {
			t.Fatalf("accepted %q=%q", k, v)
		}
		for _, c := range k {
			if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
				t.Fatalf("accepted name %q", k)
			}
		}
	})
}
