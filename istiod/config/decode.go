package config

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Object is a decoded config object: one of *corev1.Namespace, *corev1.Pod,
// *corev1.Service, *corev1.ServiceAccount, *discoveryv1.EndpointSlice,
// *securityv1.AuthorizationPolicy, *securityv1.PeerAuthentication.
type Object interface {
	metav1.Object
}

type kindInfo struct {
	namespaced bool
	newObj     func() Object
}

// kinds maps "apiVersion kind" to how to decode it.
var kinds = map[string]kindInfo{
	"v1 Namespace":                      {false, func() Object { return &corev1.Namespace{} }},
	"v1 Pod":                            {true, func() Object { return &corev1.Pod{} }},
	"v1 Service":                        {true, func() Object { return &corev1.Service{} }},
	"v1 ServiceAccount":                 {true, func() Object { return &corev1.ServiceAccount{} }},
	"discovery.k8s.io/v1 EndpointSlice": {true, func() Object { return &discoveryv1.EndpointSlice{} }},
	"security.istio.io/v1 AuthorizationPolicy":      {true, func() Object { return &securityv1.AuthorizationPolicy{} }},
	"security.istio.io/v1beta1 AuthorizationPolicy": {true, func() Object { return &securityv1.AuthorizationPolicy{} }},
	"security.istio.io/v1 PeerAuthentication":       {true, func() Object { return &securityv1.PeerAuthentication{} }},
	"security.istio.io/v1beta1 PeerAuthentication":  {true, func() Object { return &securityv1.PeerAuthentication{} }},
}

// SupportedKinds lists the "apiVersion kind" pairs Decode accepts (besides
// "v1 List").
func SupportedKinds() []string { return SortedKeys(kinds) }

// Decoded is one object of a file and where it was.
type Decoded struct {
	Object Object
	// Doc and Item locate it as in ObjectError.
	Doc, Item int
}

// DecodeFile decodes every document of one file. It returns the objects that
// decoded and validated, and one *ObjectError per rejected object or
// document. name is used in errors only.
func DecodeFile(name string, data []byte) ([]Decoded, []error) {
	var objs []Decoded
	var errs []error
	for i, doc := range splitDocuments(data) {
		o, e := decodeDocument(name, i+1, doc)
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	return objs, errs
}

// splitDocuments splits a YAML stream at lines that are exactly "---"
// (optionally followed by spaces or a comment). JSON files are one document.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if isSeparator(line) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.Write(line)
		cur.WriteByte('\n')
	}
	docs = append(docs, cur.Bytes())
	return docs
}

func isSeparator(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := bytes.TrimSpace(line[3:])
	return len(rest) == 0 || rest[0] == '#'
}

// blank reports whether a document holds nothing but whitespace and comments.
func blank(doc []byte) bool {
	for line := range bytes.Lines(doc) {
		t := bytes.TrimSpace(line)
		if len(t) > 0 && t[0] != '#' {
			return false
		}
	}
	return true
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func decodeDocument(file string, doc int, data []byte) ([]Decoded, []error) {
	if blank(data) {
		return nil, nil
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, []error{&ObjectError{File: file, Doc: doc, Err: fmt.Errorf("%w: %v", ErrSyntax, err)}}
	}
	if string(bytes.TrimSpace(js)) == "null" {
		return nil, nil
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return nil, []error{&ObjectError{File: file, Doc: doc, Err: fmt.Errorf("%w: %v", ErrSyntax, err)}}
	}
	top, ok := generic.(map[string]any)
	if !ok {
		return nil, []error{&ObjectError{File: file, Doc: doc, Err: fmt.Errorf("%w: a document must be an object with apiVersion and kind", ErrSyntax)}}
	}
	var h header
	_ = json.Unmarshal(js, &h) // best effort: only to name the object
	if h.APIVersion == "v1" && h.Kind == "List" {
		return decodeList(file, doc, top)
	}
	o, err := decodeObject(file, doc, 0, js, top)
	if err != nil {
		return nil, []error{err}
	}
	return []Decoded{{Object: o, Doc: doc}}, nil
}

func decodeList(file string, doc int, top map[string]any) ([]Decoded, []error) {
	for k := range top {
		switch k {
		case "apiVersion", "kind", "items", "metadata":
		default:
			return nil, []error{&ObjectError{File: file, Doc: doc, Kind: "List", Field: k,
				Err: fmt.Errorf("%w; a List has only apiVersion, kind, metadata and items", ErrUnknownField)}}
		}
	}
	items, ok := top["items"].([]any)
	if !ok && top["items"] != nil {
		return nil, []error{&ObjectError{File: file, Doc: doc, Kind: "List", Field: "items", Err: fmt.Errorf("%w: must be a list of objects", ErrInvalid)}}
	}
	var objs []Decoded
	var errs []error
	for i, it := range items {
		m, ok := it.(map[string]any)
		if !ok {
			errs = append(errs, &ObjectError{File: file, Doc: doc, Item: i + 1, Err: fmt.Errorf("%w: a List item must be an object", ErrSyntax)})
			continue
		}
		js, _ := json.Marshal(m)
		o, err := decodeObject(file, doc, i+1, js, m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		objs = append(objs, Decoded{Object: o, Doc: doc, Item: i + 1})
	}
	return objs, errs
}

func decodeObject(file string, doc, item int, js []byte, generic map[string]any) (Object, error) {
	var h header
	_ = json.Unmarshal(js, &h)
	oe := &ObjectError{File: file, Doc: doc, Item: item, Kind: h.Kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name}
	fail := func(field string, err error) error {
		oe.Field, oe.Err = field, err
		return oe
	}
	if h.APIVersion == "" || h.Kind == "" {
		return nil, fail("", fmt.Errorf("%w: apiVersion and kind are required", ErrInvalid))
	}
	ki, ok := kinds[h.APIVersion+" "+h.Kind]
	if !ok {
		return nil, fail("", fmt.Errorf("%w %s %s; local mode reads %s", ErrUnsupportedKind, h.APIVersion, h.Kind, strings.Join(SupportedKinds(), ", ")))
	}
	if h.Metadata.Name == "" {
		return nil, fail("metadata.name", fmt.Errorf("%w: a name is required", ErrInvalid))
	}
	obj := ki.newObj()
	if unk := unknownFields(generic, reflect.TypeOf(obj)); len(unk) > 0 {
		return nil, fail(strings.Join(unk, ", "), fmt.Errorf("%w; remove it or fix its spelling", ErrUnknownField))
	}
	if err := json.Unmarshal(js, obj); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fail(te.Field, fmt.Errorf("%w: %s given where %s is expected", ErrInvalid, te.Value, te.Type))
		}
		return nil, fail("", fmt.Errorf("%w: %v", ErrInvalid, err))
	}
	if ki.namespaced {
		if obj.GetNamespace() == "" {
			obj.SetNamespace("default")
			oe.Namespace = "default"
		}
	} else {
		obj.SetNamespace("")
		oe.Namespace = ""
	}
	if field, err := defaultAndValidate(obj); err != nil {
		return nil, fail(field, fmt.Errorf("%w: %v", ErrInvalid, err))
	}
	return obj, nil
}
