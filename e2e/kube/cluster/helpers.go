package cluster

import (
	"context"
	"fmt"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CreateNamespace creates namespace name with labels.
func (c *Cluster) CreateNamespace(ctx context.Context, name string, labels map[string]string) (*corev1.Namespace, error) {
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return ns, nil
}

// CreateServiceAccount creates ServiceAccount namespace/name.
func (c *Cluster) CreateServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	sa, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating service account %s/%s: %w", namespace, name, err)
	}
	return sa, nil
}

// CreateToken asks the TokenRequest API for a token of ServiceAccount
// namespace/name, bound to audiences (the API server's issuer when empty)
// and valid for ttl (the server's default, one hour, when zero; at least ten
// minutes otherwise).
func (c *Cluster) CreateToken(ctx context.Context, namespace, name string, audiences []string, ttl time.Duration) (string, error) {
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: audiences}}
	if ttl > 0 {
		secs := int64(ttl / time.Second)
		req.Spec.ExpirationSeconds = &secs
	}
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for service account %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// ReviewToken runs a TokenReview of token as admin, as istiod does for a
// caller's bearer token, and returns the status.
func (c *Cluster) ReviewToken(ctx context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error) {
	tr, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return authnv1.TokenReviewStatus{}, fmt.Errorf("reviewing token: %w", err)
	}
	return tr.Status, nil
}

// Eventually calls check every 100ms until it returns nil or ctx ends, and
// returns check's last error wrapped with what when ctx ends first.
func Eventually(ctx context.Context, what string, check func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// WaitForServiceAccount waits until ServiceAccount namespace/name exists: the
// controller manager creates "default" in each new namespace.
func (c *Cluster) WaitForServiceAccount(ctx context.Context, namespace, name string) error {
	return Eventually(ctx, fmt.Sprintf("service account %s/%s", namespace, name), func(ctx context.Context) error {
		_, err := c.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
		return err
	})
}

// WriteKubeconfig writes a kubeconfig at path for user in groups, with a new
// client certificate signed by the cluster CA (path+".crt", path+".key").
// server replaces Server when not empty (a forwarder to the API server, for a
// process in another network namespace); the connection then still checks
// the API server's certificate, under the name "localhost".
// It is how a test gives a kubelet its identity: user system:node:<name> in
// group system:nodes, which the Node authorizer recognizes.
func (c *Cluster) WriteKubeconfig(path, server, user string, groups ...string) error {
	certFile, keyFile := path+".crt", path+".key"
	if _, _, err := c.pki.clientCert(certFile, keyFile, user, groups...); err != nil {
		return err
	}
	tlsServerName := ""
	if server == "" {
		server = c.Server
	} else {
		tlsServerName = "localhost"
	}
	return writeKubeconfigTLS(path, server, c.CAFile, tlsServerName, user, certFile, keyFile)
}
