//go:build !linux

package cluster_test

import "syscall"

// sysProcAttr returns nil: only Linux ties a child's life to its parent;
// elsewhere t.Cleanup alone stops the nodes.
func sysProcAttr() *syscall.SysProcAttr { return nil }
