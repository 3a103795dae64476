package redistest

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts redis-server in its own process group, so that Kill also
// reaches a fork child (AOF rewrite, RDB save), and asks the kernel to SIGKILL
// it if the test binary dies without running its cleanups (a panic, a -timeout).
// Pdeathsig fires when the forking OS thread exits; the Go runtime only retires
// threads that stay locked by LockOSThread, which the tests using this do not do.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killProcess SIGKILLs the process group started by setProcAttr.
func killProcess(cmd *exec.Cmd) {
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}
