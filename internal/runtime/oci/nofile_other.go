//go:build !linux

package oci

// grantableNofile: only Linux runs OCI runtimes; elsewhere keep the request.
func grantableNofile(want uint64) uint64 { return want }

// canLowerOOMScore: only Linux has oom_score_adj.
func canLowerOOMScore() bool { return false }
