package plugin

// Plugin-specific CNI error codes (the spec reserves 100 and up for plugins).
const (
	// CodeEnrollFailed: the agent answered ADD with an error; the pod must
	// not start without capture.
	CodeEnrollFailed uint = 100
	// CodeCaptureMissing: CHECK found an enrolled pod whose capture is gone.
	CodeCaptureMissing uint = 101
)
