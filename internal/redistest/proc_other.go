//go:build !linux

package redistest

import "os/exec"

// setProcAttr keeps the defaults outside Linux: there is no Pdeathsig, and a
// process group is not portable.
func setProcAttr(*exec.Cmd) {}

// killProcess kills the server process (a fork child, if any, is not reached).
func killProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Kill()
}
