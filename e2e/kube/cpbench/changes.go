package main

import (
	"context"
	"fmt"

	apisecurity "istio.io/api/security/v1beta1"
	apitype "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
	"github.com/ambit-mesh/ambit/istiod/ambient"
)

// change is one write through the API server and the xDS resource every
// client must then receive (Removed: in removed_resources).
type change struct {
	What    string
	TypeURL string
	Name    string
	Removed bool
	apply   func(ctx context.Context, kc kubernetes.Interface, ic istioclient.Interface) error
}

// changeKinds is the cycle the changes go through: a pod label, then a
// policy created, updated and deleted.
const changeKinds = 4

// planChange returns change i of the run of server tag (policy names carry
// the tag so that the runs of both servers never share an object).
func planChange(cfg clientConfig, tag string, i int) change {
	switch i % changeKinds {
	case 0:
		p := (i*7919 + len(tag)*104729) % cfg.Pods
		ns, name := nsName(podNS(p, cfg.Namespaces)), podName(p)
		version := fmt.Sprintf("v%d-%s", i+1, tag)
		return change{
			What:    "pod label " + ns + "/" + name + " version=" + version,
			TypeURL: pilot.TypeAddress,
			Name:    ambient.PodUID(pilot.ClusterID, ns, name),
			apply: func(ctx context.Context, kc kubernetes.Interface, _ istioclient.Interface) error {
				patch := fmt.Sprintf(`{"metadata":{"labels":{"version":%q}}}`, version)
				_, err := kc.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
				return err
			},
		}
	}
	base := i - i%changeKinds + 1 // the policy's create step
	k := (base / changeKinds) % cfg.Namespaces
	ns, name := nsName(k), fmt.Sprintf("cpb-%s-pol-%d", tag, base)
	svc := svcName(k) // service k lives in namespace k (when it exists)
	c := change{TypeURL: pilot.TypeAuthorization, Name: ns + "/" + name}
	switch i % changeKinds {
	case 1:
		c.What = "AuthorizationPolicy create " + c.Name
		c.apply = func(ctx context.Context, _ kubernetes.Interface, ic istioclient.Interface) error {
			ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
			ap.Spec.Selector = &apitype.WorkloadSelector{MatchLabels: map[string]string{appLabel: svc}}
			ap.Spec.Action = apisecurity.AuthorizationPolicy_ALLOW
			ap.Spec.Rules = []*apisecurity.Rule{{
				From: []*apisecurity.Rule_From{{Source: &apisecurity.Source{
					Principals: []string{pilot.TrustDomain + "/ns/" + ns + "/sa/default"},
				}}},
				To: []*apisecurity.Rule_To{{Operation: &apisecurity.Operation{Ports: []string{fmt.Sprint(targetPort)}}}},
			}}
			_, err := ic.SecurityV1().AuthorizationPolicies(ns).Create(ctx, ap, metav1.CreateOptions{})
			return err
		}
	case 2:
		c.What = "AuthorizationPolicy update " + c.Name
		c.apply = func(ctx context.Context, _ kubernetes.Interface, ic istioclient.Interface) error {
			patch := fmt.Sprintf(`{"spec":{"rules":[{"from":[{"source":{"principals":[%q]}}],"to":[{"operation":{"ports":["%d","9090"]}}]}]}}`,
				pilot.TrustDomain+"/ns/"+ns+"/sa/default", targetPort)
			_, err := ic.SecurityV1().AuthorizationPolicies(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			return err
		}
	case 3:
		c.What = "AuthorizationPolicy delete " + c.Name
		c.Removed = true
		c.apply = func(ctx context.Context, _ kubernetes.Interface, ic istioclient.Interface) error {
			return ic.SecurityV1().AuthorizationPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{})
		}
	}
	return c
}

// leftoverPolicy returns the namespace and name of the policy that a run of
// n changes leaves behind (created but not deleted), if any.
func leftoverPolicy(cfg clientConfig, tag string, n int) (ns, name string, ok bool) {
	if n%changeKinds <= 1 {
		return "", "", false
	}
	c := planChange(cfg, tag, n-n%changeKinds+1)
	for i := range c.Name {
		if c.Name[i] == '/' {
			return c.Name[:i], c.Name[i+1:], true
		}
	}
	return "", "", false
}
