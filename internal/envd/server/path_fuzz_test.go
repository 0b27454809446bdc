package server

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wrenn/wrenn/internal/envd/account"
)

// FuzzResolvePath checks the path every RPC and /files request goes
// through: always absolute and clean, "~" is the caller's home, and a
// relative path without ".." stays under it.
func FuzzResolvePath(f *testing.F) {
	for _, s := range []string{"", "~", "~/", "~/a/../b", "~root", "a/b", "../../etc/passwd", "/abs//x/./y/", "./.", "~/../..", "a\x00b"} {
		f.Add(s)
	}
	c := caller{user: account.User{Name: "u", Home: "/home/u"}}
	f.Fuzz(func(t *testing.T, p string) {
		got := c.resolvePath(p)
		if !filepath.IsAbs(got) || filepath.Clean(got) != got {
			t.Fatalf("resolvePath(%q) = %q: not absolute and clean", p, got)
		}
		switch {
		case p == "~" || p == "":
			if got != "/home/u" {
				t.Fatalf("resolvePath(%q) = %q, want the home", p, got)
			}
		case !filepath.IsAbs(p) && !slices.Contains(strings.Split(p, "/"), ".."):
			if got != "/home/u" && !strings.HasPrefix(got, "/home/u/") {
				t.Fatalf("resolvePath(%q) = %q escapes the home without ..", p, got)
			}
		}
	})
}
