package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestMain lets the test binary act as istiod when re-executed.
func TestMain(m *testing.M) {
	if os.Getenv("ISTIOD_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const tokenFile = `tokens:
- name: node-a
  token: node-a-token-0123456789
  identities: ["spiffe://cluster.local/ns/*/sa/*"]
`

// TestBinary runs istiod as a process: it writes the root, issues a
// certificate over TLS that verifies against that root, and exits 0 on
// SIGTERM.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(tokenFile), 0o600); err != nil {
		t.Fatal(err)
	}
	rootOut := filepath.Join(dir, "root.pem")
	cmd := exec.Command(os.Args[0], "--state-dir", filepath.Join(dir, "state"), "--token-file", tokens,
		"--grpc-addr", "127.0.0.1:0", "--readiness-addr", "127.0.0.1:0", "--root-cert-out", rootOut, "--max-cert-ttl", "12h", "--cert-ttl", "1h")
	cmd.Env = append(os.Environ(), "ISTIOD_TEST_RUN_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	// Wait for the "serving certificates" line and take its address.
	lines := bufio.NewScanner(stderr)
	var addr string
	var log strings.Builder
	for addr == "" && lines.Scan() {
		l := lines.Text()
		log.WriteString(l + "\n")
		if strings.Contains(l, "serving certificates") {
			for _, f := range strings.Fields(l) {
				if v, ok := strings.CutPrefix(f, "addr="); ok {
					addr = v
				}
			}
		}
	}
	if addr == "" {
		t.Fatalf("istiod did not start:\n%s", log.String())
	}
	rest := make(chan string, 1)
	go func() { b, _ := io.ReadAll(stderr); rest <- string(b) }()

	rootPEM, err := os.ReadFile(rootOut)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatal("root-cert-out holds no certificate")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "istiod.istio-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pb.NewIstioCertificateServiceClient(conn)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://cluster.local/ns/default/sa/client")
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer node-a-token-0123456789")

	resp, err := client.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(resp.CertChain[0]))
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(leaf.NotAfter); d > time.Hour || d < 59*time.Minute {
		t.Fatalf("--cert-ttl 1h not applied: expires in %s", d)
	}
	if leaf.URIs[0].String() != u.String() {
		t.Fatalf("SAN %v", leaf.URIs)
	}
	// --max-cert-ttl 12h is enforced.
	_, err = client.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: 13 * 3600})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("over max: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	out := <-rest
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, out)
	}
	if !strings.Contains(out, "msg=stopped") || !strings.Contains(out, "refused certificate request") {
		t.Fatalf("log after start:\n%s", out)
	}
}

// TestBinaryBadConfig: a configuration error exits 2 and names the flag.
func TestBinaryBadConfig(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--state-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "ISTIOD_TEST_RUN_MAIN=1")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--token-file") {
		t.Fatalf("err %v, output %s", err, out)
	}
}

// TestBinaryCorruptState: a partial state directory stops istiod with exit 1
// and leaves the files alone.
func TestBinaryCorruptState(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "ca-key.pem"), []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(tokenFile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "--state-dir", state, "--token-file", tokens, "--grpc-addr", "127.0.0.1:0", "--readiness-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "ISTIOD_TEST_RUN_MAIN=1")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "ca-cert.pem is missing") {
		t.Fatalf("err %v, output %s", err, out)
	}
	ents, _ := os.ReadDir(state)
	if b, _ := os.ReadFile(filepath.Join(state, "ca-key.pem")); len(ents) != 1 || string(b) != "key" {
		t.Fatal("state directory changed")
	}
}
