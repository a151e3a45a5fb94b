package kube

import (
	"context"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Versions is `ambitctl version -o json`. ControlPlane and DataPlane are
// empty when nothing is installed.
type Versions struct {
	Client       string           `json:"client"`
	ControlPlane []ControlPlane   `json:"controlPlane"`
	DataPlane    []DataPlaneCount `json:"dataPlane"`
}

// ControlPlane is one istiod Deployment.
type ControlPlane struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Version is the label app.kubernetes.io/version, else the image tag.
	Version  string `json:"version"`
	Image    string `json:"image,omitempty"`
	Replicas int32  `json:"replicas"`
	Ready    int32  `json:"ready"`
}

// DataPlaneCount is how many ztunnel pods run one version.
type DataPlaneCount struct {
	Component string `json:"component"`
	Version   string `json:"version"`
	Pods      int    `json:"pods"`
}

// GetVersions reads the control plane (istiod Deployments, label
// app=istiod) and the data plane (pods of label app=ztunnel) in namespace
// ns.
func GetVersions(ctx context.Context, cs kubernetes.Interface, ns, client string) (Versions, error) {
	v := Versions{Client: client, ControlPlane: []ControlPlane{}, DataPlane: []DataPlaneCount{}}
	deps, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelApp + "=" + AppIstiod})
	if err != nil {
		return v, APIError(err, "list", "deployments.apps", ns)
	}
	for _, d := range deps.Items {
		img := containerImage(d.Spec.Template.Spec.Containers, "discovery")
		ver := d.Labels[LabelVersion]
		if ver == "" {
			ver = imageTag(img)
		}
		rep := int32(1)
		if d.Spec.Replicas != nil {
			rep = *d.Spec.Replicas
		}
		v.ControlPlane = append(v.ControlPlane, ControlPlane{Name: d.Name, Namespace: d.Namespace, Version: ver, Image: img, Replicas: rep, Ready: d.Status.ReadyReplicas})
	}
	sort.Slice(v.ControlPlane, func(i, j int) bool { return v.ControlPlane[i].Name < v.ControlPlane[j].Name })
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelApp + "=" + AppZtunnel})
	if err != nil {
		return v, APIError(err, "list", "pods", ns)
	}
	count := map[string]int{}
	for _, p := range pods.Items {
		count[imageTag(containerImage(p.Spec.Containers, AppZtunnel))]++
	}
	for ver, n := range count {
		v.DataPlane = append(v.DataPlane, DataPlaneCount{Component: AppZtunnel, Version: ver, Pods: n})
	}
	sort.Slice(v.DataPlane, func(i, j int) bool { return v.DataPlane[i].Version < v.DataPlane[j].Version })
	return v, nil
}

// containerImage is the image of the container named name, else of the
// first container.
func containerImage(cs []corev1.Container, name string) string {
	for _, c := range cs {
		if c.Name == name {
			return c.Image
		}
	}
	if len(cs) > 0 {
		return cs[0].Image
	}
	return ""
}

// imageTag is the tag of an image reference ("unknown" without one; a
// digest-only reference gives the digest).
func imageTag(img string) string {
	if i := strings.LastIndex(img, "@"); i >= 0 {
		return img[i+1:]
	}
	slash := strings.LastIndex(img, "/")
	if i := strings.LastIndex(img, ":"); i > slash {
		return img[i+1:]
	}
	return "unknown"
}
