package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
)

// ErrNotObject is returned for a config file that is not a JSON object.
var ErrNotObject = errors.New("not a JSON object")

// document is a parsed CNI config file: a conflist, or a single plugin config
// when plugins is nil.
type document struct {
	top     map[string]json.RawMessage
	plugins []json.RawMessage
	isList  bool
}

func parseDocument(data []byte) (*document, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, err
	}
	if top == nil {
		return nil, ErrNotObject
	}
	d := &document{top: top}
	if raw, ok := top["plugins"]; ok {
		if err := json.Unmarshal(raw, &d.plugins); err != nil {
			return nil, fmt.Errorf("plugins is not an array: %w", err)
		}
		d.isList = true
	}
	return d, nil
}

// pluginType returns the "type" of a plugin entry, "" when absent.
func pluginType(raw json.RawMessage) string {
	var p struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(raw, &p)
	return p.Type
}

// marker returns the original file name recorded in an ambit-cni entry.
func marker(raw json.RawMessage) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return ""
	}
	var s string
	_ = json.Unmarshal(m[markerKey], &s)
	return s
}

// ourEntry encodes the desired ambit-cni entry, with "type" first.
func ourEntry(e PluginEntry, convertedFrom string) json.RawMessage {
	type entry struct {
		Type string `json:"type"`
		PluginEntry
		ConvertedFrom string `json:"ambit_converted_from,omitempty"`
	}
	b, err := json.Marshal(entry{Type: PluginType, PluginEntry: e, ConvertedFrom: convertedFrom})
	if err != nil {
		panic(err) // strings only: cannot fail
	}
	return b
}

// edit is the outcome of editing one file: write data to name (when data is
// non-nil) and then remove the original file when name differs from it.
type edit struct {
	name    string
	data    []byte
	changed bool
}

// insertEntry returns the desired content of file name so that ambit-cni is
// the last plugin, exactly once, with entry's config. A single-plugin config
// is converted to a conflist named stem+".conflist".
func insertEntry(name string, data []byte, e PluginEntry) (edit, error) {
	doc, err := parseDocument(data)
	if err != nil {
		return edit{}, err
	}
	if !doc.isList {
		plugin := make(map[string]json.RawMessage, len(doc.top))
		top := map[string]json.RawMessage{}
		for k, v := range doc.top {
			switch k {
			case "cniVersion", "name":
				top[k] = v
			default:
				plugin[k] = v
			}
		}
		pb, err := json.Marshal(plugin)
		if err != nil {
			return edit{}, err
		}
		doc = &document{top: top, isList: true, plugins: []json.RawMessage{pb, ourEntry(e, name)}}
		out, err := doc.encode()
		if err != nil {
			return edit{}, err
		}
		return edit{name: strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist", data: out, changed: true}, nil
	}
	var keep []json.RawMessage
	convertedFrom := ""
	for _, p := range doc.plugins {
		if pluginType(p) == PluginType {
			if m := marker(p); m != "" {
				convertedFrom = m
			}
			continue
		}
		keep = append(keep, p)
	}
	want := append(keep, ourEntry(e, convertedFrom))
	if sameJSON(doc.plugins, want) {
		return edit{name: name}, nil
	}
	doc.plugins = want
	out, err := doc.encode()
	if err != nil {
		return edit{}, err
	}
	return edit{name: name, data: out, changed: true}, nil
}

// removeEntry returns the content of file name without ambit-cni. A conflist
// the installer converted from a single-plugin file is turned back into that
// file when only the original plugin is left.
func removeEntry(name string, data []byte) (edit, error) {
	doc, err := parseDocument(data)
	if err != nil {
		return edit{}, err
	}
	if !doc.isList {
		return edit{name: name}, nil
	}
	var keep []json.RawMessage
	convertedFrom := ""
	for _, p := range doc.plugins {
		if pluginType(p) == PluginType {
			if m := marker(p); m != "" {
				convertedFrom = m
			}
			continue
		}
		keep = append(keep, p)
	}
	if len(keep) == len(doc.plugins) {
		return edit{name: name}, nil
	}
	if convertedFrom != "" && len(keep) == 1 && filepath.Base(convertedFrom) == convertedFrom {
		var plugin map[string]json.RawMessage
		if err := json.Unmarshal(keep[0], &plugin); err == nil && plugin != nil {
			for k, v := range doc.top {
				if k != "plugins" {
					plugin[k] = v
				}
			}
			out, err := (&document{top: plugin}).encode()
			if err != nil {
				return edit{}, err
			}
			return edit{name: convertedFrom, data: out, changed: true}, nil
		}
	}
	if keep == nil {
		keep = []json.RawMessage{}
	}
	doc.plugins = keep
	out, err := doc.encode()
	if err != nil {
		return edit{}, err
	}
	return edit{name: name, data: out, changed: true}, nil
}

// encode writes the document indented, top-level keys sorted.
func (d *document) encode() ([]byte, error) {
	top := d.top
	if d.isList {
		pl, err := json.Marshal(d.plugins)
		if err != nil {
			return nil, err
		}
		top = make(map[string]json.RawMessage, len(d.top)+1)
		for k, v := range d.top {
			top[k] = v
		}
		top["plugins"] = pl
	}
	out, err := json.MarshalIndent(top, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// sameJSON reports whether two plugin lists are equal as JSON values.
func sameJSON(a, b []json.RawMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !equalJSON(a[i], b[i]) {
			return false
		}
	}
	return true
}

func equalJSON(a, b []byte) bool {
	var va, vb any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&va) != nil || db.Decode(&vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// hasEntry reports whether a conflist holds an ambit-cni entry.
func hasEntry(data []byte) bool {
	doc, err := parseDocument(data)
	if err != nil || !doc.isList {
		return false
	}
	for _, p := range doc.plugins {
		if pluginType(p) == PluginType {
			return true
		}
	}
	return false
}
