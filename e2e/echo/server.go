package echo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Server serves the three echo protocols for one pod name.
type Server struct {
	Name   string
	Logger *slog.Logger
}

// ServeHTTP answers every request with the pod name and the peer it saw.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Ambit-Pod", s.Name)
	fmt.Fprintf(w, "pod=%s peer=%s path=%s\n", s.Name, r.RemoteAddr, r.URL.Path)
}

// ServeTCP answers each line on conn until the peer closes; it closes conn.
func (s *Server) ServeTCP(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if len(line) > 0 {
			if line[len(line)-1] == '\n' {
				line = line[:len(line)-1]
			}
			if _, werr := fmt.Fprintf(conn, "pod=%s peer=%s echo=%s\n", s.Name, conn.RemoteAddr(), line); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serveRaw copies conn's input back to it and half-closes once the input
// ended; it closes conn.
func serveRaw(conn net.Conn) {
	defer conn.Close()
	io.Copy(conn, conn)
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

type grpcEcho struct {
	testpb.UnimplementedTestServiceServer
	name string
}

func (g *grpcEcho) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Hostname: g.name, ServerId: g.name, Payload: req.GetPayload()}, nil
}

// Listeners are the sockets Run serves; a nil one is not served.
type Listeners struct {
	HTTP, TCP, GRPC net.Listener
	// Raw echoes bytes verbatim and half-closes after the peer does.
	Raw net.Listener
}

// Run serves on the given listeners until ctx ends, then closes them.
func (s *Server) Run(ctx context.Context, ls Listeners) error {
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	if ls.HTTP != nil {
		hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Serve(ls.HTTP); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("http echo: %w", err)
			}
		}()
		context.AfterFunc(ctx, func() { hs.Close() })
	}
	if ls.TCP != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ls.TCP.Accept()
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("tcp echo: %w", err)
					}
					return
				}
				go s.ServeTCP(c)
			}
		}()
		context.AfterFunc(ctx, func() { ls.TCP.Close() })
	}
	if ls.Raw != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ls.Raw.Accept()
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("raw echo: %w", err)
					}
					return
				}
				go serveRaw(c)
			}
		}()
		context.AfterFunc(ctx, func() { ls.Raw.Close() })
	}
	if ls.GRPC != nil {
		gs := grpc.NewServer()
		testpb.RegisterTestServiceServer(gs, &grpcEcho{name: s.Name})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := gs.Serve(ls.GRPC); err != nil {
				errs <- fmt.Errorf("grpc echo: %w", err)
			}
		}()
		context.AfterFunc(ctx, gs.Stop)
	}
	log.Info("echo serving", "pod", s.Name)
	wg.Wait()
	close(errs)
	return errors.Join(collect(errs)...)
}

func collect(ch <-chan error) []error {
	var out []error
	for e := range ch {
		out = append(out, e)
	}
	return out
}
