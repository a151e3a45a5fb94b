// Command ambit-attack is the part of the attack suite that must run as a
// pod's own process (started with `ambitctl local exec NS/POD -- ...`), so
// that the node's agent and ztunnel see a pod, not the test:
//
//	ambit-attack zds -socket PATH [-hold 3s] [-max-conns 20]
//	    rogue ztunnel on the node's ZDS socket (attack.ZDSTakeover)
//	ambit-attack squat -addr [::]:15008 [-hold 8s]
//	    foreign SO_REUSEPORT listener (attack.Squat); prints a "ready" JSON
//	    line once the bind succeeded or failed
//
// Each prints its result as one JSON line on stdout and exits 0; exit 1
// means the attack could not be made (e.g. no socket at PATH).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ambit-mesh/ambit/e2e/attack"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "zds":
		fs := flag.NewFlagSet("zds", flag.ExitOnError)
		path := fs.String("socket", "", "the node's ZDS socket (required)")
		hold := fs.Duration("hold", 3*time.Second, "how long to keep taking over")
		maxConns := fs.Int("max-conns", 20, "at most this many valid-hello connections")
		fs.Parse(os.Args[2:])
		if *path == "" {
			usage()
		}
		var res attack.ZDSResult
		res, err = attack.ZDSTakeover(*path, *hold, *maxConns)
		if err == nil {
			err = emit(res)
		}
	case "squat":
		fs := flag.NewFlagSet("squat", flag.ExitOnError)
		addr := fs.String("addr", "[::]:15008", "address to squat")
		hold := fs.Duration("hold", 8*time.Second, "how long to keep the listener")
		fs.Parse(os.Args[2:])
		res := attack.Squat(*addr, *hold, func(r attack.SquatResult) {
			emit(struct {
				Ready bool `json:"ready"`
				attack.SquatResult
			}{true, r})
		})
		err = emit(res)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambit-attack:", err)
		os.Exit(1)
	}
}

func emit(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", b)
	return err
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ambit-attack zds -socket PATH [-hold 3s] [-max-conns 20]\n       ambit-attack squat [-addr [::]:15008] [-hold 8s]")
	os.Exit(2)
}
