// Package plugin is the logic of ambit-cni, a chained CNI plugin (spec 1.0.0
// and 1.1.0) that must come after the plugin that creates the pod's interface.
//
// ADD asks the node's cni-agent (package agentapi) to enroll the pod and
// returns only after the agent answers: capture in place and ztunnel ready, or
// "not enrolled". Either way the result printed is the prevResult unchanged.
// ADD fails (fail closed) when there is no prevResult, the agent is
// unreachable, does not answer within the configured timeout, or reports an
// enrollment error. Invocations without K8S_POD_NAMESPACE/K8S_POD_NAME in
// CNI_ARGS (not a Kubernetes pod) pass through without asking the agent.
//
// DEL tells the agent to release the pod, best effort: it never fails once
// its config parses. CHECK fails when the agent is unreachable or says an
// enrolled pod's capture is gone. STATUS fails with code 50 when the agent
// does not answer ready.
//
// Every error returned is a *types.Error with a code from the CNI spec or one
// of this package's Code* (>= 100), and a message naming cause and fix.
// Nothing here writes to stdout except the result; logs go to log_file or
// stderr.
package plugin
