package enrollment

// Label keys and values of the enrollment rule.
const (
	// LabelDataplaneMode selects the data plane of a namespace or pod.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// ModeAmbient enrolls a namespace or pod.
	ModeAmbient = "ambient"
	// ModeNone on a pod opts it out, whatever its namespace says.
	ModeNone = "none"
)

// Decision is the verdict for one pod.
type Decision struct {
	Enrolled bool
	// Reason says which label decided, for logs and API answers.
	Reason string
}

// Decide applies the enrollment rule (see the package doc) to a pod's labels
// and its namespace's labels. Nil maps are empty.
func Decide(podLabels, namespaceLabels map[string]string) Decision {
	switch podLabels[LabelDataplaneMode] {
	case ModeNone:
		return Decision{Reason: "pod labelled " + LabelDataplaneMode + "=" + ModeNone}
	case ModeAmbient:
		return Decision{Enrolled: true, Reason: "pod labelled " + LabelDataplaneMode + "=" + ModeAmbient}
	}
	if namespaceLabels[LabelDataplaneMode] == ModeAmbient {
		return Decision{Enrolled: true, Reason: "namespace labelled " + LabelDataplaneMode + "=" + ModeAmbient}
	}
	return Decision{Reason: "neither pod nor namespace labelled " + LabelDataplaneMode + "=" + ModeAmbient}
}

// Enrolled is Decide(...).Enrolled.
func Enrolled(podLabels, namespaceLabels map[string]string) bool {
	return Decide(podLabels, namespaceLabels).Enrolled
}
