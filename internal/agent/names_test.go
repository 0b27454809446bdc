package agent

import (
	"regexp"
	"testing"
)

func TestResourceNames(t *testing.T) {
	t.Parallel()
	a := ResourceNames("/var/lib/wrenn")
	if again := ResourceNames("/var/lib/wrenn/"); again != a {
		t.Errorf("the same directory gives %+v and %+v", a, again)
	}
	if !regexp.MustCompile(`^[a-z]{5}$`).MatchString(a.Tag) {
		t.Errorf("tag %q is not five lowercase letters", a.Tag)
	}
	if a.Prefix != "wrenn-"+a.Tag || a.IfPrefix != "wv"+a.Tag {
		t.Errorf("names %+v do not carry the tag", a)
	}
	// Directories of parallel test stacks: every one gets its own tag.
	seen := map[string]string{a.Tag: "/var/lib/wrenn"}
	for _, d := range []string{"/tmp/TestA1/001", "/tmp/TestA1/002", "/tmp/TestB/001", "/srv/wrenn", "/var/lib/wrenn2"} {
		n := ResourceNames(d)
		if other, dup := seen[n.Tag]; dup {
			t.Errorf("%s and %s share tag %q", d, other, n.Tag)
		}
		seen[n.Tag] = d
	}
}
