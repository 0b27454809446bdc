package oci

import "testing"

// TestInitOOMScoreAdj: on runc the sandbox's init (and envd, which inherits
// it) is shielded from the OOM killer by the runtime, the only party allowed
// to lower it, where the agent holds CAP_SYS_RESOURCE; gVisor's spec
// carries none.
func TestInitOOMScoreAdj(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		shields bool
	}{{"runc", canLowerOOMScore()}, {RunscName, false}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, func(c *Config) { c.Name = tt.name })
			spec, err := f.d.sandboxSpec(testSpec(t, "sb-oom"))
			if err != nil {
				t.Fatalf("sandboxSpec: %v", err)
			}
			got := spec.Process.OOMScoreAdj
			switch {
			case !tt.shields && got != nil:
				t.Errorf("oomScoreAdj %d, want none", *got)
			case tt.shields && (got == nil || *got != InitOOMScoreAdj):
				t.Errorf("oomScoreAdj %v, want %d", got, InitOOMScoreAdj)
			}
		})
	}
}
