package config

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinels wrapped by ObjectError.Err, for errors.Is.
var (
	// ErrUnknownField: the document has a field its kind does not define.
	ErrUnknownField = errors.New("unknown field")
	// ErrInvalid: a field's value is malformed or out of range.
	ErrInvalid = errors.New("invalid value")
	// ErrUnsupportedKind: the apiVersion/kind is not one local mode reads.
	ErrUnsupportedKind = errors.New("unsupported kind")
	// ErrDuplicate: an object of the same kind, namespace and name was
	// already defined (the first definition is kept).
	ErrDuplicate = errors.New("duplicate object")
	// ErrSyntax: the document is not well-formed YAML/JSON.
	ErrSyntax = errors.New("malformed document")
)

// ObjectError reports one rejected object: where it is and which field is
// wrong. The other objects of the same file still apply.
type ObjectError struct {
	// File is the path of the file, as given to LoadDir/DecodeFile.
	File string
	// Doc is the 1-based index of the "---" document in File.
	Doc int
	// Item is the 1-based index in a `kind: List` document; 0 otherwise.
	Item int
	// Kind, Namespace and Name identify the object as far as they could be
	// read (Namespace is empty for cluster-scoped kinds).
	Kind, Namespace, Name string
	// Field is the path of the offending field (spec.ports[0].port), or
	// empty when the whole document is at fault.
	Field string
	// Err wraps one of the sentinels above.
	Err error
}

func (e *ObjectError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: document %d", e.File, e.Doc)
	if e.Item > 0 {
		fmt.Fprintf(&b, " item %d", e.Item)
	}
	if obj := e.Object(); obj != "" {
		fmt.Fprintf(&b, " (%s)", obj)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, ": field %s", e.Field)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *ObjectError) Unwrap() error { return e.Err }

// Object names the object: "Kind namespace/name", "Kind name" or "Kind".
func (e *ObjectError) Object() string {
	switch {
	case e.Kind == "" && e.Name == "":
		return ""
	case e.Name == "":
		return e.Kind
	case e.Namespace == "":
		return e.Kind + " " + e.Name
	}
	return e.Kind + " " + e.Namespace + "/" + e.Name
}
