// Command demo is `make demo`: by default it brings up the example local
// mesh (deploy/examples/local/demo.yaml) with ambitctl, sends traffic from
// an enrolled client to a server on the other node, and prints the answer,
// the identities both ztunnels verified and the metrics of that traffic; the
// mesh stays up to explore. With -tunnel it runs the smaller tunnel demo (a
// CA and two HBONE endpoints on loopback, no root needed). It exits 0 only
// when everything it shows worked.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding the built binaries (make build)")
	topo := flag.String("f", "deploy/examples/local/demo.yaml", "topology of the local mesh")
	tunnel := flag.Bool("tunnel", false, "run the tunnel demo instead of the local mesh")
	flag.Parse()
	var err error
	if *tunnel {
		err = runTunnel(filepath.Join(*bin, "istiod"))
	} else {
		err = runLocal(*bin, *topo)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}
