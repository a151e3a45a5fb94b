package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Enrollment label: a namespace (or pod) with it is in the ambient mesh;
// a pod with ValueNone opts out.
const (
	LabelDataplaneMode = "istio.io/dataplane-mode"
	ValueAmbient       = "ambient"
	ValueNone          = "none"
)

// EnrollResult says what Enroll or Unenroll did.
type EnrollResult struct {
	Namespace string
	// Changed is false when the namespace already was as asked.
	Changed bool
	// Previous is the label's value before ("" when absent).
	Previous string
	// PodsLabelled are the pods (names) that carry the ambient label
	// themselves, so stay enrolled whatever the namespace says (Unenroll
	// without pods); PodsUnlabelled are those Unenroll with pods took it
	// from.
	PodsLabelled   []string
	PodsUnlabelled []string
}

// Enroll sets istio.io/dataplane-mode=ambient on namespace ns. Idempotent.
func Enroll(ctx context.Context, cs kubernetes.Interface, ns string) (EnrollResult, error) {
	r := EnrollResult{Namespace: ns}
	cur, err := getNamespace(ctx, cs, ns)
	if err != nil {
		return r, err
	}
	r.Previous = cur.Labels[LabelDataplaneMode]
	if r.Previous == ValueAmbient {
		return r, nil
	}
	if err := patchLabel(ctx, cs, ns, "", ValueAmbient); err != nil {
		return r, err
	}
	r.Changed = true
	return r, nil
}

// Unenroll removes istio.io/dataplane-mode from namespace ns. Pods that
// carry istio.io/dataplane-mode=ambient themselves stay enrolled: with
// pods false they are listed in PodsLabelled, with pods true the label is
// removed from them too (pods labelled none keep their opt-out).
// Idempotent.
func Unenroll(ctx context.Context, cs kubernetes.Interface, ns string, pods bool) (EnrollResult, error) {
	r := EnrollResult{Namespace: ns}
	cur, err := getNamespace(ctx, cs, ns)
	if err != nil {
		return r, err
	}
	r.Previous = cur.Labels[LabelDataplaneMode]
	if _, ok := cur.Labels[LabelDataplaneMode]; ok {
		if err := patchLabel(ctx, cs, ns, "", ""); err != nil {
			return r, err
		}
		r.Changed = true
	}
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: LabelDataplaneMode + "=" + ValueAmbient})
	if err != nil {
		return r, APIError(err, "list", "pods", ns)
	}
	for _, p := range list.Items {
		if !pods {
			r.PodsLabelled = append(r.PodsLabelled, p.Name)
			continue
		}
		if err := patchLabel(ctx, cs, ns, p.Name, ""); err != nil {
			return r, err
		}
		r.PodsUnlabelled = append(r.PodsUnlabelled, p.Name)
		r.Changed = true
	}
	sort.Strings(r.PodsLabelled)
	sort.Strings(r.PodsUnlabelled)
	return r, nil
}

func getNamespace(ctx context.Context, cs kubernetes.Interface, ns string) (*metav1.ObjectMeta, error) {
	n, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("namespace %q not found: check the name (kubectl get namespaces) or create it (kubectl create namespace %s)", ns, ns)
	}
	if err != nil {
		return nil, APIError(err, "get", "namespaces", "")
	}
	return &n.ObjectMeta, nil
}

// patchLabel sets (value != "") or removes the enrollment label of
// namespace ns, or of its pod when pod != "", by a JSON merge patch.
func patchLabel(ctx context.Context, cs kubernetes.Interface, ns, pod, value string) error {
	var v any
	if value != "" {
		v = value
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{LabelDataplaneMode: v}}})
	if err != nil {
		return err
	}
	if pod == "" {
		_, err = cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
		return APIError(err, "patch", "namespaces", "")
	}
	_, err = cs.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	return APIError(err, "patch", "pods", ns)
}

// FieldManager is the field manager of ambitctl's writes.
const FieldManager = "ambitctl"
