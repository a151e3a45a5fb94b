package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/install"
)

// Tries of the DaemonSet look-up at exit, within the shutdown deadline.
const (
	dsTries    = 3
	dsTryDelay = 500 * time.Millisecond
)

// uninstalling decides at exit, for --daemonset, whether the agent is being
// uninstalled from the node (as Istio's node agent decides): its DaemonSet
// is gone or being deleted, the agent may no longer read it (the uninstall
// removed its service account or RBAC), or the DaemonSet's node selector
// no longer matches this node. Otherwise (a rolling update, a node
// restart, or the API server unreachable) the agent is coming back: it
// leaves the plugin and the pods' capture in place. The reason is logged.
func uninstalling(ctx context.Context, client kubernetes.Interface, ds types.NamespacedName, node string, log *slog.Logger) bool {
	var lastErr error
	for try := range dsTries {
		if try > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(dsTryDelay):
			}
		}
		uninstall, reason, err := decideUninstall(ctx, client, ds, node)
		if err == nil {
			log.Info("exit: "+reason, "daemonset", ds.String(), "uninstall", uninstall)
			return uninstall
		}
		lastErr = err
	}
	log.Warn("exit: cannot tell an upgrade from an uninstall; leaving the plugin and the pods' capture in place", "daemonset", ds.String(), "error", lastErr)
	return false
}

func decideUninstall(ctx context.Context, client kubernetes.Interface, ds types.NamespacedName, node string) (bool, string, error) {
	obj, err := client.AppsV1().DaemonSets(ds.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, "the agent's DaemonSet is gone: uninstalling", nil
	case apierrors.IsUnauthorized(err), apierrors.IsForbidden(err):
		return true, fmt.Sprintf("the agent may no longer read its DaemonSet (%v): uninstalling", err), nil
	case err != nil:
		return false, "", fmt.Errorf("reading DaemonSet %s: %w", ds, err)
	case obj.DeletionTimestamp != nil:
		return true, "the agent's DaemonSet is being deleted: uninstalling", nil
	}
	if sel := obj.Spec.Template.Spec.NodeSelector; len(sel) > 0 {
		n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, "", fmt.Errorf("reading Node %s: %w", node, err)
		}
		if !labels.SelectorFromSet(sel).Matches(labels.Set(n.Labels)) {
			return true, "the agent's DaemonSet no longer selects this node: uninstalling", nil
		}
	}
	return false, "the agent's DaemonSet is still in place (an upgrade or a node restart): leaving the plugin and the pods' capture in place", nil
}

// uninstall removes Ambit from the node, in the order that never lets a
// pod start uncaptured while the plugin is configured: ambit-cni leaves
// the CNI config first (new pods start with plain networking), then every
// captured pod is released, and the plugin binary goes last, once no
// config names it (a runtime deletes a pod with the config it has now, so
// a DEL after this does not look for ambit-cni). A pod that cannot be
// released does not keep the binary: nothing can call it any more.
func uninstall(ctx context.Context, cfg Config, inst *install.Installer, a *agent.Agent, log *slog.Logger) {
	if err := inst.Uninstall(ctx); err != nil {
		log.Error("removing ambit-cni from the CNI config; the plugin binary and the pods' capture stay", "dir", cfg.CNIConfDir, "error", err)
		return
	}
	log.Info("removed ambit-cni from the CNI config", "dir", cfg.CNIConfDir)
	if err := a.ReleaseAll(ctx); err != nil {
		log.Error("releasing captured pods; those named keep their capture rules", "error", err)
	} else {
		log.Info("released every captured pod")
	}
	if err := inst.RemoveBinary(); err != nil {
		log.Error("removing the ambit-cni binary", "dir", cfg.CNIBinDir, "error", err)
		return
	}
	log.Info("removed the ambit-cni binary", "dir", cfg.CNIBinDir)
}
