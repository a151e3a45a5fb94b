// Package install installs, upgrades and uninstalls Ambit's embedded chart
// (deploy/charts) through the Helm SDK, for `ambitctl install`, `upgrade`
// and `uninstall`.
//
// Contract:
//   - Values merge like helm's: -f files in order, then --set (Values).
//   - Install and Upgrade use server-side apply (Helm v4). Helm installs
//     the chart's crds/ on first install only; Upgrade server-side applies
//     charts.CRDs() itself first (field manager ambitctl, conflicts forced),
//     so CRDs follow the chart.
//   - DryRun renders locally (charts.Render, CRDs included) and contacts
//     no cluster.
//   - Wait: Helm does not wait; Wait polls the release's Deployments and
//     DaemonSets (label app.kubernetes.io/instance=RELEASE) and reports on
//     Progress each time the set of workloads not ready yet changes, until
//     all are ready or the timeout passes (an error naming them).
//   - Uninstall removes the release; Purge also deletes the chart's CRDs
//     (and with them every custom resource of those kinds) and istiod's
//     self-signed CA Secret, and returns what it removed.
package install
