package plugin

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// K8sArgs are the CNI_ARGS a Kubernetes container runtime passes.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

// IsPod reports whether the args name a Kubernetes pod.
func (a *K8sArgs) IsPod() bool {
	return a.K8S_POD_NAMESPACE != "" && a.K8S_POD_NAME != ""
}

// ParseArgs parses CNI_ARGS ("K=V;K2=V2"). Unknown keys are ignored unless
// the args themselves say IgnoreUnknown=false. Errors are *types.Error.
func ParseArgs(s string) (*K8sArgs, error) {
	a := &K8sArgs{}
	a.IgnoreUnknown = true
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("ambit-cni: cannot parse CNI_ARGS: %v", err),
			"the container runtime passed malformed CNI_ARGS; expected K=V pairs separated by ';'")
	}
	return a, nil
}
