package kube

import (
	"errors"
	"fmt"
	"os"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Where Ambit and Istio run, and the labels they are found by.
const (
	DefaultNamespace = "istio-system"
	// LabelApp selects the components' pods and workloads (app=istiod,
	// app=ztunnel), as in Istio's charts.
	LabelApp     = "app"
	AppIstiod    = "istiod"
	AppZtunnel   = "ztunnel"
	LabelVersion = "app.kubernetes.io/version"
)

// Client is a cluster connection.
type Client struct {
	Config    *rest.Config
	Clientset kubernetes.Interface
}

// NewClient connects through kubectl's flags (--kubeconfig, --context,
// ...; env KUBECONFIG).
func NewClient(getter genericclioptions.RESTClientGetter) (*Client, error) {
	cfg, err := getter.ToRESTConfig()
	if err != nil {
		return nil, ConfigError(err)
	}
	// With no kubeconfig at all client-go falls back to localhost:8080;
	// say what is missing instead of a connection refused.
	if raw, err := getter.ToRawKubeConfigLoader().RawConfig(); err == nil && len(raw.Clusters) == 0 &&
		os.Getenv("KUBERNETES_SERVICE_HOST") == "" && strings.TrimPrefix(cfg.Host, "http://") == "localhost:8080" {
		return nil, ConfigError(clientcmd.ErrEmptyConfig)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building a Kubernetes client: %w", err)
	}
	return &Client{Config: cfg, Clientset: cs}, nil
}

// ErrNoCluster is wrapped by ConfigError when no kubeconfig was found.
var ErrNoCluster = errors.New("no Kubernetes cluster configured")

// ConfigError explains an error of loading the kubeconfig.
func ConfigError(err error) error {
	if clientcmd.IsEmptyConfig(err) {
		return fmt.Errorf("%w: pass --kubeconfig FILE (and --context NAME), or set KUBECONFIG (ztunnel-config and proxy-status read the local mesh with --local)", ErrNoCluster)
	}
	return fmt.Errorf("loading the kubeconfig (flags --kubeconfig, --context; env KUBECONFIG): %w", err)
}

// APIError adds what to do to an API error: for a forbidden call the
// permission (verb, resource) it needed; for an unreachable server the
// flags that choose it.
func APIError(err error, verb, resource, namespace string) error {
	if err == nil {
		return nil
	}
	where := "cluster-wide"
	if namespace != "" {
		where = "in namespace " + namespace
	}
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w\nambitctl needs permission to %s %s %s: ask a cluster admin for a Role/ClusterRole granting it, or use --context/--as with an identity that has it", err, verb, resource, where)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w\nthe API server did not accept the credentials: check the user of --context/--kubeconfig (expired token or certificate?)", err)
	}
	var se *apierrors.StatusError
	if !errors.As(err, &se) && !errors.Is(err, ErrNoCluster) {
		return fmt.Errorf("%s %s: %w (is the API server of --kubeconfig/--context reachable?)", verb, resource, err)
	}
	return err
}
