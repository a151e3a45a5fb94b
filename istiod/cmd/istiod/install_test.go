package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/ca/casecret"
	"github.com/ambit-mesh/ambit/istiod/rbac"
	"github.com/ambit-mesh/ambit/istiod/rootcert"
	istiodxds "github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/pkg/syncz"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

// istiodProc is an istiod binary started by startIstiod.
type istiodProc struct {
	cmd       *exec.Cmd
	logs      *syncBuffer
	exited    chan error
	grpcAddr  string
	readyAddr string
	rootOut   string
}

// startIstiod runs the test binary as istiod with args (plus listen
// addresses and --root-cert-out) and waits for /ready. It is killed when
// the test ends; stop ends it with SIGTERM.
func startIstiod(ctx context.Context, t *testing.T, args ...string) *istiodProc {
	t.Helper()
	p := &istiodProc{logs: &syncBuffer{}, exited: make(chan error, 1), rootOut: filepath.Join(t.TempDir(), "root.pem")}
	args = append([]string{"--grpc-addr", "127.0.0.1:0", "--readiness-addr", "127.0.0.1:0", "--root-cert-out", p.rootOut}, args...)
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Env = append(os.Environ(), "ISTIOD_TEST_RUN_MAIN=1")
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		err := <-p.exited
		p.exited <- err
		if t.Failed() || os.Getenv("AMBIT_TEST_LOGS") != "" {
			t.Logf("istiod %v log:\n%s", args, p.logs.String())
		}
	})
	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			l := sc.Text()
			p.logs.Write([]byte(l + "\n"))
			if !sent && strings.Contains(l, "serving certificates") {
				var a [2]string
				for _, f := range strings.Fields(l) {
					if v, ok := strings.CutPrefix(f, "addr="); ok {
						a[0] = v
					}
					if v, ok := strings.CutPrefix(f, "readiness="); ok {
						a[1] = v
					}
				}
				addrs <- a
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.exited <- p.cmd.Wait()
	}()
	select {
	case a := <-addrs:
		p.grpcAddr, p.readyAddr = a[0], a[1]
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("istiod exited: %v\n%s", err, p.logs.String())
	case <-ctx.Done():
		t.Fatalf("istiod did not start:\n%s", p.logs.String())
	}
	if err := cluster.Eventually(ctx, "istiod /ready", func(context.Context) error {
		_, err := p.get(ReadyPath)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

// get returns the body of a 200 answer to path on the readiness address.
func (p *istiodProc) get(path string) ([]byte, error) {
	resp, err := http.Get("http://" + p.readyAddr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d: %s", path, resp.StatusCode, b)
	}
	return b, nil
}

func (p *istiodProc) root(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(p.rootOut)
	if err != nil || len(b) == 0 {
		t.Fatalf("root-cert-out: %v (%d bytes)", err, len(b))
	}
	return b
}

// stop sends SIGTERM and waits for exit 0.
func (p *istiodProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("istiod did not stop after SIGTERM")
	}
}

// restrictedKubeconfig creates service account ns/name bound to istiod's
// rules (rbac.ClusterRules, and rbac.NamespaceRules(caSecret) in each of
// secretNamespaces) and returns a kubeconfig with its token: istiod then
// runs with exactly the RBAC the chart grants.
func restrictedKubeconfig(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name, caSecret string, secretNamespaces ...string) string {
	t.Helper()
	if _, err := c.CreateServiceAccount(ctx, ns, name); err != nil {
		t.Fatal(err)
	}
	subj := []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: name}}
	rb := c.Client.RbacV1()
	if _, err := rb.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rbac.ClusterRules()}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rb.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}, Subjects: subj,
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, sns := range secretNamespaces {
		if _, err := rb.Roles(sns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rbac.NamespaceRules(caSecret)}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := rb.RoleBindings(sns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}, Subjects: subj,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	token, err := c.CreateToken(ctx, ns, name, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: istiod, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: istiod}}]
current-context: test
`, c.Server, c.CAFile, token)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// noForbidden fails the test if istiod's log shows an RBAC refusal.
func noForbidden(t *testing.T, p *istiodProc) {
	t.Helper()
	if l := p.logs.String(); strings.Contains(strings.ToLower(l), "forbidden") {
		t.Errorf("istiod was refused by RBAC:\n%s", l)
	}
}

// TestKubeInstall runs istiod as the chart does (under the service account
// and RBAC of istiod/rbac, --ca-secret, an optional cacerts mount) against a
// real API server: the self-signed root is created once in the Secret and
// kept across restarts and racing replicas; cacerts, when present, win;
// istio-ca-root-cert is kept in every namespace; /debug/syncz reports a
// real ztunnel xDS client SYNCED and a client that does not ACK STALE.
func TestKubeInstall(t *testing.T) {
	c := cluster.StartT(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	applyIstioCRDs(ctx, t, c)
	for _, ns := range []string{"istio-system", "istio-race"} {
		if _, err := c.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := restrictedKubeconfig(ctx, t, c, "istio-system", "istiod", casecret.DefaultName, "istio-system", "istio-race")
	base := []string{"--kubeconfig", kubeconfig, "--ca-secret", casecret.DefaultName}
	secrets := c.Client.CoreV1().Secrets("istio-system")

	// First start creates the root in the Secret; two restarts read it back.
	p := startIstiod(ctx, t, base...)
	root := p.root(t)
	sec, err := secrets.Get(ctx, casecret.DefaultName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Type != casecret.SecretType || !bytes.Equal(sec.Data[ca.CACertFile], root) || !bytes.Equal(sec.Data[ca.RootCertFile], root) ||
		len(sec.Data[ca.CAKeyFile]) == 0 {
		t.Fatalf("Secret: type %q, keys %v", sec.Type, keysOf(sec.Data))
	}
	for _, k := range []string{ca.CertChainFile, casecret.KeyPrivateKey} {
		if v, ok := sec.Data[k]; !ok || len(v) != 0 {
			t.Errorf("Secret key %s: present %v, %d bytes; Istio writes it empty", k, ok, len(v))
		}
	}
	if !strings.Contains(p.logs.String(), "created self-signed root CA") {
		t.Error("no log line saying the root was created")
	}
	rv := sec.ResourceVersion
	p.stop(t)
	noForbidden(t, p)
	for i := range 2 {
		p = startIstiod(ctx, t, base...)
		if !bytes.Equal(p.root(t), root) {
			t.Fatalf("restart %d: another root", i+1)
		}
		if !strings.Contains(p.logs.String(), "using the self-signed root CA") || !strings.Contains(p.logs.String(), "Secret istio-system/istio-ca-secret") {
			t.Errorf("restart %d: no log line naming the Secret's root", i+1)
		}
		if i == 0 {
			p.stop(t)
		}
	}
	if sec, err = secrets.Get(ctx, casecret.DefaultName, metav1.GetOptions{}); err != nil || sec.ResourceVersion != rv {
		t.Fatalf("Secret changed by a restart: %v", err)
	}
	// The store maps the API server's AlreadyExists: a second create loses.
	if err := casecret.New(secrets, "istio-system", casecret.DefaultName).Create(ctx, []byte("x"), []byte("y")); !errors.Is(err, ca.ErrRootExists) {
		t.Fatalf("create over an existing Secret: %v, want ErrRootExists", err)
	}

	t.Run("root-cert ConfigMap", func(t *testing.T) {
		cms := func(ns string) (*corev1.ConfigMap, error) {
			return c.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{})
		}
		published := func(ns string) func(context.Context) error {
			return func(context.Context) error {
				cm, err := cms(ns)
				if err != nil {
					return err
				}
				if cm.Data[rootcert.DataKey] != string(root) || cm.Labels[rootcert.LabelKey] != rootcert.LabelValue {
					return fmt.Errorf("ConfigMap %s: labels %v, root-cert.pem %d bytes", ns, cm.Labels, len(cm.Data[rootcert.DataKey]))
				}
				return nil
			}
		}
		const bound = 10 * time.Second
		within := func(what, ns string) {
			t.Helper()
			bctx, bcancel := context.WithTimeout(ctx, bound)
			defer bcancel()
			start := time.Now()
			if err := cluster.Eventually(bctx, what, published(ns)); err != nil {
				t.Fatalf("%s not within %s: %v", what, bound, err)
			}
			t.Logf("%s after %s", what, time.Since(start).Round(time.Millisecond))
		}
		within("ConfigMap in istio-system", "istio-system")
		if _, err := cms("kube-public"); !apierrors.IsNotFound(err) {
			t.Errorf("kube-public: %v, want no ConfigMap (Istio skips it)", err)
		}
		if _, err := c.CreateNamespace(ctx, "later", nil); err != nil {
			t.Fatal(err)
		}
		within("ConfigMap in a new namespace", "later")
		if err := c.Client.CoreV1().ConfigMaps("later").Delete(ctx, rootcert.ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		within("ConfigMap restored after delete", "later")
		cm, err := cms("later")
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[rootcert.DataKey] = "edited"
		cm.Data["user-key"] = "kept"
		if _, err := c.Client.CoreV1().ConfigMaps("later").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		within("ConfigMap fixed after edit", "later")
		if cm, err := cms("later"); err != nil || cm.Data["user-key"] != "kept" {
			t.Errorf("a key the user added was dropped: %v", err)
		}
		cur, err := cms("later")
		if err != nil {
			t.Fatal(err)
		}
		delete(cur.Labels, rootcert.LabelKey)
		if _, err := c.Client.CoreV1().ConfigMaps("later").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		within("label restored", "later")

		// A namespace being deleted is skipped: its ConfigMap is deleted
		// with it and not recreated (a ConfigMap with a finalizer holds
		// the namespace in Terminating meanwhile).
		if _, err := c.CreateNamespace(ctx, "doomed", nil); err != nil {
			t.Fatal(err)
		}
		within("ConfigMap in the namespace to delete", "doomed")
		const hold = "ambit.test/hold"
		if _, err := c.Client.CoreV1().ConfigMaps("doomed").Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "hold", Finalizers: []string{hold}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			patch := []byte(`{"metadata":{"finalizers":null}}`)
			_, _ = c.Client.CoreV1().ConfigMaps("doomed").Patch(context.Background(), "hold", types.MergePatchType, patch, metav1.PatchOptions{})
		})
		if err := c.Client.CoreV1().Namespaces().Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := cluster.Eventually(ctx, "the ConfigMap gone with its Terminating namespace", func(context.Context) error {
			ns, err := c.Client.CoreV1().Namespaces().Get(ctx, "doomed", metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("namespace: %v", err)
			}
			if ns.Status.Phase != corev1.NamespaceTerminating {
				return fmt.Errorf("namespace phase %s", ns.Status.Phase)
			}
			if _, err := cms("doomed"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("ConfigMap: %v", err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// A namespace created after the deletion is a barrier: once its
		// ConfigMap exists, istiod has handled the deletion's events.
		if _, err := c.CreateNamespace(ctx, "after-doomed", nil); err != nil {
			t.Fatal(err)
		}
		within("ConfigMap in a namespace created after the deletion", "after-doomed")
		if _, err := cms("doomed"); !apierrors.IsNotFound(err) {
			t.Errorf("ConfigMap recreated in a Terminating namespace: %v", err)
		}
		if strings.Contains(p.logs.String(), "namespace=doomed configmap=istio-ca-root-cert retries") {
			t.Errorf("istiod retried a Terminating namespace:\n%s", p.logs.String())
		}
	})

	t.Run("syncz", func(t *testing.T) { testSyncz(ctx, t, c, p) })

	p.stop(t)
	noForbidden(t, p)

	t.Run("racing replicas agree", func(t *testing.T) {
		args := []string{"--kubeconfig", kubeconfig, "--ca-secret", casecret.DefaultName, "--namespace", "istio-race"}
		var wg sync.WaitGroup
		ps := make([]*istiodProc, 2)
		for i := range ps {
			wg.Add(1)
			go func() { defer wg.Done(); ps[i] = startIstiodNoFatal(ctx, t, args...) }()
		}
		wg.Wait()
		if ps[0] == nil || ps[1] == nil {
			t.FailNow()
		}
		sec, err := c.Client.CoreV1().Secrets("istio-race").Get(ctx, casecret.DefaultName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range ps {
			if !bytes.Equal(p.root(t), sec.Data[ca.CACertFile]) {
				t.Errorf("replica %d uses a root other than the Secret's", i)
			}
		}
		if bytes.Equal(sec.Data[ca.CACertFile], root) {
			t.Error("istio-race holds istio-system's root")
		}
		for _, p := range ps {
			p.stop(t)
			noForbidden(t, p)
		}
	})

	t.Run("a lost create reads the winner's root", func(t *testing.T) {
		// Both callers find no Secret before either creates one, so one
		// Create gets AlreadyExists from the API server.
		var barrier sync.WaitGroup
		barrier.Add(2)
		const name = "race-forced"
		secrets := c.Client.CoreV1().Secrets("istio-race")
		roots := make([][]byte, 2)
		var wg sync.WaitGroup
		for i := range roots {
			wg.Add(1)
			go func() {
				defer wg.Done()
				store := &barrierStore{RootStore: casecret.New(secrets, "istio-race", name), barrier: &barrier}
				a, err := ca.LoadOrCreateContext(ctx, ca.Options{TrustDomain: "cluster.local", RootStore: store})
				if err != nil {
					t.Error(err)
					return
				}
				roots[i] = a.RootsPEM()
			}()
		}
		wg.Wait()
		sec, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(roots[0], sec.Data[ca.CACertFile]) || !bytes.Equal(roots[1], sec.Data[ca.CACertFile]) {
			t.Fatal("racing creators use different roots")
		}
	})

	t.Run("cacerts win over the Secret", func(t *testing.T) {
		dir := t.TempDir()
		cacertsRoot := writeCACerts(t, dir)
		p := startIstiod(ctx, t, append(base, "--ca-dir", dir)...)
		if got := p.root(t); !bytes.Equal(got, cacertsRoot) || bytes.Equal(got, root) {
			t.Fatal("with cacerts: not the cacerts root")
		}
		if !strings.Contains(p.logs.String(), "using the CA from cacerts files") {
			t.Error("no log line naming the cacerts root")
		}
		p.stop(t)
		if sec, err := secrets.Get(ctx, casecret.DefaultName, metav1.GetOptions{}); err != nil || sec.ResourceVersion != rv {
			t.Fatalf("Secret touched while cacerts were used: %v", err)
		}
	})

	t.Run("empty ca-dir means the Secret's root", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "..2026_12_05_10_00_00.1"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("..2026_12_05_10_00_00.1", filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		p := startIstiod(ctx, t, append(base, "--ca-dir", dir)...)
		if !bytes.Equal(p.root(t), root) {
			t.Fatal("empty ca-dir: not the Secret's root")
		}
		if !strings.Contains(p.logs.String(), "CA directory holds no cacerts files; using the self-signed root") {
			t.Error("no log line saying the ca-dir is empty")
		}
		p.stop(t)
		noForbidden(t, p)
	})
}

// startIstiodNoFatal is startIstiod for another goroutine: it reports
// failures with t.Error and returns nil.
func startIstiodNoFatal(ctx context.Context, t *testing.T, args ...string) (p *istiodProc) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if p == nil {
				t.Error("istiod did not start")
			}
		}()
		p = startIstiod(ctx, t, args...)
	}()
	<-done
	return p
}

// testSyncz connects a real ztunnel xDS client and a client that never
// ACKs, both as node-a's ztunnel, and reads /debug/syncz.
func testSyncz(ctx context.Context, t *testing.T, c *cluster.Cluster, p *istiodProc) {
	if _, err := c.CreateServiceAccount(ctx, "istio-system", "ztunnel"); err != nil {
		t.Fatal(err)
	}
	zt := kubePod(ctx, t, c, "istio-system", "ztunnel-a", "ztunnel", "node-a", "10.244.1.2", nil)
	token := podToken(ctx, t, c, zt)
	const nodeID = "ztunnel~10.244.1.2~ztunnel-a.istio-system~istio-system.svc.cluster.local"
	store := state.New(state.Options{TrustDomain: "cluster.local"})
	xc, err := xds.New(xds.Options{
		Address: p.grpcAddr, ServerName: "istiod.istio-system.svc", RootCAFile: p.rootOut,
		Token: func(context.Context) (string, error) { return token, nil },
		Store: store, NodeID: nodeID,
		NodeMetadata: map[string]string{"NODE_NAME": "node-a", istiodxds.MetadataIstioVersion: "9.9.9-test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	xctx, xstop := context.WithCancel(ctx)
	xdone := make(chan error, 1)
	go func() { xdone <- xc.Run(xctx) }()
	defer func() { xstop(); <-xdone; xc.Close() }()
	select {
	case <-xc.Synced():
	case <-ctx.Done():
		t.Fatalf("xDS never synced: %+v", xc.Stats())
	}
	read := func() ([]syncz.Proxy, error) {
		b, err := p.get(syncz.Path)
		if err != nil {
			return nil, err
		}
		var ps []syncz.Proxy
		if err := json.Unmarshal(b, &ps); err != nil {
			return nil, fmt.Errorf("%s is not a JSON list of syncz.Proxy: %v: %s", syncz.Path, err, b)
		}
		return ps, nil
	}
	statuses := func(pr syncz.Proxy) map[string]syncz.Type {
		m := map[string]syncz.Type{}
		for _, ty := range pr.Types {
			m[ty.TypeURL] = ty
		}
		return m
	}
	if err := cluster.Eventually(ctx, "the ztunnel SYNCED in syncz", func(context.Context) error {
		ps, err := read()
		if err != nil {
			return err
		}
		if len(ps) != 1 {
			return fmt.Errorf("%d proxies: %+v", len(ps), ps)
		}
		pr := ps[0]
		if pr.ID != nodeID || pr.Kind != "ztunnel" || pr.Node != "node-a" || pr.Pod != "ztunnel-a" || pr.Namespace != "istio-system" || pr.Version != "9.9.9-test" {
			return fmt.Errorf("proxy %+v", pr)
		}
		st := statuses(pr)
		for _, u := range []string{istiodxds.TypeAddress, istiodxds.TypeAuthorization} {
			if ty := st[u]; ty.Status != syncz.Synced || ty.Sent == "" || ty.Acked != ty.Sent {
				return fmt.Errorf("%s: %+v", u, ty)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// A client that receives and never ACKs is STALE on that type.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.root(t))
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "istiod.istio-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token))
	defer scancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"NODE_NAME": "node-a"})
	const silentID = "ztunnel~10.244.1.3~ztunnel-silent.istio-system~istio-system.svc.cluster.local"
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: silentID, Metadata: md}, TypeUrl: istiodxds.TypeAddress, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Eventually(ctx, "the silent client STALE in syncz", func(context.Context) error {
		ps, err := read()
		if err != nil {
			return err
		}
		if len(ps) != 2 || ps[1].ID != silentID {
			return fmt.Errorf("proxies %+v", ps)
		}
		st := statuses(ps[1])
		if ty := st[istiodxds.TypeAddress]; ty.Status != syncz.Stale || ty.Sent != resp.GetNonce() || ty.Acked != "" || len(ps[1].Types) != 1 {
			return fmt.Errorf("silent client: %+v", ps[1].Types)
		}
		if st := statuses(ps[0]); st[istiodxds.TypeAddress].Status != syncz.Synced {
			return fmt.Errorf("the ztunnel: %+v", ps[0].Types)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// barrierStore holds its first Load until every racer has made its own.
type barrierStore struct {
	ca.RootStore
	barrier *sync.WaitGroup
	once    sync.Once
}

func (b *barrierStore) Load(ctx context.Context) ([]byte, []byte, error) {
	cert, key, err := b.RootStore.Load(ctx)
	b.once.Do(func() { b.barrier.Done(); b.barrier.Wait() })
	return cert, key, err
}

// writeCACerts writes Istio cacerts files (a root and an intermediate
// signing certificate) to dir and returns the root's PEM.
func writeCACerts(t *testing.T, dir string) []byte {
	t.Helper()
	mk := func(cn string, serial int64, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{Organization: []string{"cluster.local"}, CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	root, rootKey := mk("test root", 1, nil, nil)
	inter, interKey := mk("test intermediate", 2, root, rootKey)
	certPEM := func(c *x509.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(interKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		ca.CACertFile: certPEM(inter), ca.CAKeyFile: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		ca.CertChainFile: certPEM(inter), ca.RootCertFile: certPEM(root),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certPEM(root)
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
