//go:build !linux

package main

import (
	"fmt"
	"os"
)

// oomguard guards a gVisor sandbox, which only exists on Linux.
func main() {
	fmt.Fprintln(os.Stderr, "oomguard runs only on Linux")
	os.Exit(1)
}
