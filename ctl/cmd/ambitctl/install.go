package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/ctl/install"
)

// newInstallCmds are install, upgrade and uninstall of the embedded chart.
func newInstallCmds(a *app, k *kubeFlags) []*cobra.Command {
	return []*cobra.Command{newInstallCmd(a, k, false), newInstallCmd(a, k, true), newUninstallCmd(a, k)}
}

func newInstallCmd(a *app, k *kubeFlags, upgrade bool) *cobra.Command {
	o := install.Options{}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install Ambit (the embedded Helm chart) into the cluster",
		Long: `install installs Ambit's chart, embedded in ambitctl, as Helm release "ambit"
in namespace istio-system (-n to change; created when missing), with
server-side apply: the CRDs, istiod, the ztunnel and cni-agent DaemonSets and
their RBAC. Values merge as with helm: -f files in order, then --set.
--wait waits until every Deployment and DaemonSet of the release is ready,
printing those still waiting. --dry-run prints what would be applied (CRDs
included) without contacting the cluster. Run ambitctl precheck first.`,
		Example: "  ambitctl install --wait\n  ambitctl install -f my-values.yaml --set cni.capture=iptables --set global.hub=registry.example/ambit\n  ambitctl install --dry-run > ambit.yaml",
		Args:    cobra.NoArgs,
	}
	if upgrade {
		cmd.Use = "upgrade"
		cmd.Short = "Upgrade the Ambit release to this ambitctl's chart (and change its values)"
		cmd.Long = `upgrade server-side applies the chart's CRDs (Helm does not upgrade CRDs),
then upgrades the Helm release to the chart embedded in this ambitctl with
the values of -f and --set (values not given return to the chart's
defaults, as with helm upgrade). --wait, --timeout and --dry-run work as for
install. Upgrade the control plane before the data plane by setting the
istiod image tag first (--set istiod.image.tag=NEW), then the rest.`
		cmd.Example = "  ambitctl upgrade --wait\n  ambitctl upgrade --set ztunnel.logLevel=debug --wait --timeout 10m"
	}
	cmd.Flags().StringArrayVarP(&o.ValueFiles, "values", "f", nil, "values file (repeatable; later files win)")
	cmd.Flags().StringArrayVar(&o.Set, "set", nil, "set a value: key=value, e.g. cni.capture=iptables (repeatable; wins over -f)")
	cmd.Flags().BoolVar(&o.Wait, "wait", false, "wait until the release's Deployments and DaemonSets are ready, showing which are not")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", install.DefaultTimeout, "how long to wait (with --wait) and Helm's operation timeout")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "print the manifest that would be applied (CRDs included); change nothing")
	cmd.Flags().StringVar(&o.Release, "release", install.DefaultRelease, "Helm release name")
	k.add(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		o.Namespace, o.Getter, o.Progress = k.namespace(), k.cf, a.stderr
		if o.DryRun {
			m, err := install.Render(o)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(a.stdout, m)
			return err
		}
		if _, err := k.client(); err != nil {
			return err
		}
		start := time.Now()
		var err error
		if upgrade {
			err = install.Upgrade(cmd.Context(), o)
		} else {
			err = install.Install(cmd.Context(), o)
		}
		if err != nil {
			return err
		}
		verb := "installed"
		if upgrade {
			verb = "upgraded"
		}
		fmt.Fprintf(a.stdout, "Ambit %s in %s (release %s) in %s\n", verb, o.Namespace, o.Release, time.Since(start).Round(time.Second))
		if !upgrade {
			fmt.Fprintf(a.stdout, "next: ambitctl enroll NAMESPACE\n")
		}
		return nil
	}
	return cmd
}

func newUninstallCmd(a *app, k *kubeFlags) *cobra.Command {
	o := install.Options{}
	var purge bool
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Uninstall Ambit (the Helm release); --purge also deletes its CRDs",
		Long: `uninstall removes the Helm release: istiod, the ztunnel and cni-agent
DaemonSets (the cni-agent removes every pod's capture and its CNI plugin as
it stops) and their RBAC; once istiod has stopped, also the istio-ca-root-cert
ConfigMaps it published in every namespace. The CRDs stay, with the policies
you created, and so does istiod's CA Secret, so a reinstall keeps the root.
--purge also deletes the chart's CRDs, and with them every
AuthorizationPolicy, PeerAuthentication, Gateway and route of those kinds,
and istiod's self-signed CA Secret; it asks nothing and prints what it
removed.`,
		Example: "  ambitctl uninstall\n  ambitctl uninstall --purge",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Namespace, o.Getter, o.Progress = k.namespace(), k.cf, a.stderr
			if _, err := k.client(); err != nil {
				return err
			}
			removed, err := install.Uninstall(cmd.Context(), o, purge)
			if len(removed) > 0 && purge {
				fmt.Fprintf(a.stderr, "warning: --purge removed %d objects (and every custom resource of the removed kinds):\n  %s\n", len(removed), strings.Join(removed, "\n  "))
			} else if len(removed) > 0 {
				fmt.Fprintf(a.stderr, "removed %d objects istiod had created:\n  %s\n", len(removed), strings.Join(removed, "\n  "))
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Ambit uninstalled from %s (release %s)\n", o.Namespace, o.Release)
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also delete the CRDs (and all their custom resources) and istiod's CA Secret")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", install.DefaultTimeout, "Helm's operation timeout")
	cmd.Flags().StringVar(&o.Release, "release", install.DefaultRelease, "Helm release name")
	k.add(cmd.Flags())
	return cmd
}
