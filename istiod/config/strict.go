package config

import (
	"encoding/json"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// unknownFields returns the paths of the fields of v (a document decoded
// into generic JSON values) that type t does not define, sorted. Go structs
// are checked against their json tags (exact, case-sensitive names, as the
// API server's strict decoding does); protobuf messages (Istio's specs)
// against their descriptors, accepting the JSON name and the proto name as
// protojson does. Types with their own UnmarshalJSON (times, quantities,
// int-or-string) are leaves.
func unknownFields(v any, t reflect.Type) []string {
	var out []string
	walkGo(v, t, "", &out)
	sort.Strings(out)
	return out
}

var (
	unmarshalerType   = reflect.TypeFor[json.Unmarshaler]()
	protoMessageType  = reflect.TypeFor[proto.Message]()
	structFieldsCache sync.Map // reflect.Type → map[string]reflect.Type
)

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func walkGo(v any, t reflect.Type, path string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if pt := reflect.PointerTo(t); pt.Implements(protoMessageType) {
		md := reflect.New(t).Interface().(proto.Message).ProtoReflect().Descriptor()
		walkProto(v, md, path, out)
		return
	}
	if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return // a type error; json.Unmarshal reports it
		}
		fields := structFields(t)
		for k, fv := range obj {
			ft, ok := fields[k]
			if !ok {
				*out = append(*out, join(path, k))
				continue
			}
			walkGo(fv, ft, join(path, k), out)
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			return
		}
		for k, fv := range obj {
			walkGo(fv, t.Elem(), path+"["+strconv.Quote(k)+"]", out)
		}
	case reflect.Slice, reflect.Array:
		arr, ok := v.([]any)
		if !ok {
			return
		}
		for i, ev := range arr {
			walkGo(ev, t.Elem(), path+"["+strconv.Itoa(i)+"]", out)
		}
	}
}

// structFields maps the JSON names of t's fields (with embedded structs
// without a name flattened, as encoding/json does) to their types.
func structFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := structFieldsCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "" && f.Anonymous {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for k, v := range structFields(et) {
					if _, shadowed := m[k]; !shadowed {
						m[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	structFieldsCache.Store(t, m)
	return m
}

func walkProto(v any, md protoreflect.MessageDescriptor, path string, out *[]string) {
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return // well-known types have special JSON forms
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return
	}
	fields := md.Fields()
	for k, fv := range obj {
		fd := fields.ByJSONName(k)
		if fd == nil {
			fd = fields.ByTextName(k)
		}
		if fd == nil {
			*out = append(*out, join(path, k))
			continue
		}
		p := join(path, k)
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				continue
			}
			if m, ok := fv.(map[string]any); ok {
				for mk, mv := range m {
					walkProto(mv, fd.MapValue().Message(), p+"["+strconv.Quote(mk)+"]", out)
				}
			}
		case fd.IsList():
			if fd.Kind() != protoreflect.MessageKind {
				continue
			}
			if arr, ok := fv.([]any); ok {
				for i, ev := range arr {
					walkProto(ev, fd.Message(), p+"["+strconv.Itoa(i)+"]", out)
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			walkProto(fv, fd.Message(), p, out)
		}
	}
}
