// CoreDNS with only the plugins the real node's cluster DNS uses. Upstream's own main links
// every plugin (cloud DNS providers, etcd, dnstap, ...); importing just these keeps the cold
// build a fraction of that. Plugins register themselves with CoreDNS when imported; the order
// they run in still comes from CoreDNS's own directive list.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
