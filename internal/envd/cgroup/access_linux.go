package cgroup

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func unixAccessW(name string) error {
	if err := unix.Access(name, unix.W_OK); err != nil {
		return fmt.Errorf("check write access to %s: %w", name, err)
	}
	return nil
}
