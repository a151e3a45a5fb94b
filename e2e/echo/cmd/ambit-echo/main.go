// Command ambit-echo is the mesh's test workload: `ambit-echo server` serves
// HTTP, TCP and gRPC echo; `ambit-echo client` makes N calls and prints a
// summary (exit status 1 when any call failed).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/e2e/echo"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambit-echo:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ambit-echo server [-name N] [-http :8080] [-tcp :9000] [-grpc :7070] [-raw :9001]\n       ambit-echo client -proto http|tcp|grpc -addr HOST:PORT [-n 10] [-marker M] [-o json]")
	os.Exit(2)
}

func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	name := fs.String("name", os.Getenv("POD_NAME"), "pod name reported in answers (default $POD_NAME, else the host name)")
	httpAddr := fs.String("http", ":8080", "HTTP listen address; empty disables")
	tcpAddr := fs.String("tcp", ":9000", "TCP listen address; empty disables")
	grpcAddr := fs.String("grpc", ":7070", "gRPC listen address; empty disables")
	rawAddr := fs.String("raw", ":9001", "raw byte-echo listen address; empty disables")
	fs.Parse(args)
	if *name == "" {
		*name, _ = os.Hostname()
	}
	var ls echo.Listeners
	for _, l := range []struct {
		addr string
		dst  *net.Listener
	}{{*httpAddr, &ls.HTTP}, {*tcpAddr, &ls.TCP}, {*grpcAddr, &ls.GRPC}, {*rawAddr, &ls.Raw}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", l.addr, err)
		}
		*l.dst = ln
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return (&echo.Server{Name: *name, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}).Run(ctx, ls)
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	var o echo.CallOptions
	fs.StringVar(&o.Proto, "proto", echo.ProtoHTTP, "http, tcp or grpc")
	fs.StringVar(&o.Addr, "addr", "", "server HOST:PORT (required)")
	fs.IntVar(&o.N, "n", 10, "number of calls")
	fs.StringVar(&o.Marker, "marker", "ambit", "text sent in every call")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Second, "per-call timeout")
	out := fs.String("o", "text", "output: text or json")
	fs.Parse(args)
	if o.Addr == "" {
		return fmt.Errorf("-addr is required (the server's HOST:PORT)")
	}
	s, err := echo.Call(context.Background(), o)
	if err != nil {
		return err
	}
	if *out == "json" {
		if err := json.NewEncoder(os.Stdout).Encode(s); err != nil {
			return err
		}
	} else {
		fmt.Println(s)
		if s.Last != "" {
			fmt.Println("last answer:", s.Last)
		}
	}
	if s.Failed > 0 {
		return fmt.Errorf("%d of %d calls failed", s.Failed, s.Calls)
	}
	return nil
}
