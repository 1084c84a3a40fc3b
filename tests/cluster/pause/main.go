// pause is PID 1 of every pod sandbox in the test cluster (containerd's
// sandbox_image): it holds the pod's namespaces, reaps zombies, and exits on
// SIGTERM or SIGINT. Built statically and packed into a one-file image by
// tests/cluster/build.py, so the cluster pulls nothing from a registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
