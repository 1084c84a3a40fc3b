// A minimal CoreDNS for the one-node cluster tier (tests/cluster): only the
// plugins its Corefile uses, so it builds in seconds from the CoreDNS module
// pinned in ../../go.mod (github.com/coredns/coredns). Built by
// `python3 tests/controlplane/build.py build-node` (`make cluster`).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The order plugins run in (upstream's plugin.cfg order, restricted to these).
func init() {
	dnsserver.Directives = []string{
		"reload", "bind", "health", "ready", "errors", "log", "cache", "kubernetes", "loop", "forward",
	}
}

func main() { coremain.Run() }
