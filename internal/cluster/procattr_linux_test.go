package cluster_test

import "syscall"

// sysProcAttr makes the kernel kill a node when the test process dies, so
// that a test binary that panics or is killed leaves no server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
