package echo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Protocols the client speaks.
const (
	ProtoHTTP = "http"
	ProtoTCP  = "tcp"
	ProtoGRPC = "grpc"
)

// CallOptions says what the client does.
type CallOptions struct {
	Proto   string        // http, tcp or grpc
	Addr    string        // host:port
	N       int           // number of calls, each on a new connection
	Marker  string        // sent in every call (path, line or payload)
	Timeout time.Duration // per call
}

// Summary is what a run of calls saw.
type Summary struct {
	Calls    int            `json:"calls"`
	OK       int            `json:"ok"`
	Failed   int            `json:"failed"`
	Answered map[string]int `json:"answered"` // pod name -> calls it answered
	Errors   []string       `json:"errors,omitempty"`
	Last     string         `json:"last,omitempty"` // the last answer, verbatim
}

// String is a one-line human summary.
func (s Summary) String() string {
	var pods []string
	for p, n := range s.Answered {
		pods = append(pods, fmt.Sprintf("%s(%d)", p, n))
	}
	sort.Strings(pods)
	out := fmt.Sprintf("%d calls, %d ok, %d failed, answered by %s", s.Calls, s.OK, s.Failed, strings.Join(pods, " "))
	if len(s.Errors) > 0 {
		out += "; first error: " + s.Errors[0]
	}
	return out
}

// Call makes opts.N calls, each on a new connection, and summarises them.
func Call(ctx context.Context, opts CallOptions) (Summary, error) {
	if opts.N <= 0 {
		return Summary{}, fmt.Errorf("calls: n must be positive, got %d", opts.N)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	var one func(context.Context) (pod, answer string, err error)
	switch opts.Proto {
	case ProtoHTTP:
		one = func(ctx context.Context) (string, string, error) { return callHTTP(ctx, opts) }
	case ProtoTCP:
		one = func(ctx context.Context) (string, string, error) { return callTCP(ctx, opts) }
	case ProtoGRPC:
		one = func(ctx context.Context) (string, string, error) { return callGRPC(ctx, opts) }
	default:
		return Summary{}, fmt.Errorf("proto %q: want http, tcp or grpc", opts.Proto)
	}
	s := Summary{Answered: map[string]int{}}
	for i := 0; i < opts.N; i++ {
		cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		pod, answer, err := one(cctx)
		cancel()
		s.Calls++
		if err != nil {
			s.Failed++
			s.Errors = append(s.Errors, err.Error())
			continue
		}
		s.OK++
		s.Answered[pod]++
		s.Last = answer
	}
	return s, nil
}

func callHTTP(ctx context.Context, opts CallOptions) (string, string, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+opts.Addr+"/"+opts.Marker, nil)
	if err != nil {
		return "", "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("http %s: status %d", opts.Addr, resp.StatusCode)
	}
	return resp.Header.Get("X-Ambit-Pod"), strings.TrimSpace(string(body)), nil
}

func callTCP(ctx context.Context, opts CallOptions) (string, string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(c, "%s\n", opts.Marker); err != nil {
		return "", "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("tcp %s: reading answer: %w", opts.Addr, err)
	}
	line = strings.TrimSpace(line)
	return field(line, "pod"), line, nil
}

func callGRPC(ctx context.Context, opts CallOptions) (string, string, error) {
	cc, err := grpc.NewClient("passthrough:///"+opts.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", "", err
	}
	defer cc.Close()
	resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{
		Payload: &testpb.Payload{Body: []byte(opts.Marker)},
	})
	if err != nil {
		return "", "", err
	}
	return resp.GetHostname(), fmt.Sprintf("pod=%s echo=%s", resp.GetHostname(), resp.GetPayload().GetBody()), nil
}

// field returns the value of key=value in a space-separated line.
func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}
