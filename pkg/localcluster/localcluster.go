package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// State is the whole cluster as local mode knows it.
type State struct {
	// Generation increases with every write; readers may skip equal ones.
	Generation int64       `json:"generation"`
	Namespaces []Namespace `json:"namespaces"`
	Pods       []Pod       `json:"pods"`
}

// Namespace is a namespace and its labels.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Pod is a running pod.
type Pod struct {
	UID            string            `json:"uid"`
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	Node           string            `json:"node"`
	ServiceAccount string            `json:"serviceAccount"`
	Labels         map[string]string `json:"labels,omitempty"`
	// Netns is the path of the pod's network namespace (/var/run/netns/...).
	Netns string `json:"netns"`
	// IPs are the pod's addresses once CNI ADD succeeded; empty before.
	IPs []netip.Addr `json:"ips,omitempty"`
}

// Key is namespace/name.
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// ErrInvalid is wrapped by validation errors.
var ErrInvalid = errors.New("invalid cluster state")

// Validate checks the fields readers rely on.
func (s *State) Validate() error {
	var errs []error
	ns := map[string]bool{}
	for i, n := range s.Namespaces {
		if n.Name == "" {
			errs = append(errs, fmt.Errorf("%w: namespaces[%d].name is empty", ErrInvalid, i))
		}
		ns[n.Name] = true
	}
	uids := map[string]bool{}
	for i, p := range s.Pods {
		at := fmt.Sprintf("pods[%d] (%s)", i, p.Key())
		switch {
		case p.UID == "":
			errs = append(errs, fmt.Errorf("%w: %s.uid is empty", ErrInvalid, at))
		case uids[p.UID]:
			errs = append(errs, fmt.Errorf("%w: %s.uid %q is used twice", ErrInvalid, at, p.UID))
		}
		uids[p.UID] = true
		if p.Name == "" || p.Node == "" || p.ServiceAccount == "" {
			errs = append(errs, fmt.Errorf("%w: %s needs name, node and serviceAccount", ErrInvalid, at))
		}
		if !ns[p.Namespace] {
			errs = append(errs, fmt.Errorf("%w: %s.namespace %q is not listed under namespaces", ErrInvalid, at, p.Namespace))
		}
		if p.Netns == "" {
			errs = append(errs, fmt.Errorf("%w: %s.netns is empty", ErrInvalid, at))
		}
	}
	return errors.Join(errs...)
}

// Namespace returns the named namespace and whether it exists.
func (s *State) Namespace(name string) (Namespace, bool) {
	for _, n := range s.Namespaces {
		if n.Name == name {
			return n, true
		}
	}
	return Namespace{}, false
}

// Pod returns the pod namespace/name and whether it exists.
func (s *State) Pod(namespace, name string) (Pod, bool) {
	for _, p := range s.Pods {
		if p.Namespace == namespace && p.Name == name {
			return p, true
		}
	}
	return Pod{}, false
}

// Load reads and validates a state file.
func Load(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading cluster state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrInvalid, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

// Write validates s and replaces the file at path atomically.
func Write(path string, s *State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".cluster-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Watch calls fn with the state at path now and after every change, until
// ctx ends. It polls (every interval, default 200ms) by modification time,
// size and generation, so it works on any filesystem. A file that is missing
// or invalid is reported to onErr (may be nil) and the last good state stays.
func Watch(ctx context.Context, path string, interval time.Duration, fn func(*State), onErr func(error)) {
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	var lastMod time.Time
	var lastSize int64 = -1
	var lastGen int64 = -1
	var lastErr string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if fi, err := os.Stat(path); err == nil && (fi.ModTime() != lastMod || fi.Size() != lastSize) {
			s, err := Load(path)
			switch {
			case err != nil:
				if onErr != nil && err.Error() != lastErr {
					onErr(err)
				}
				lastErr = err.Error()
			case s.Generation != lastGen:
				lastMod, lastSize, lastGen, lastErr = fi.ModTime(), fi.Size(), s.Generation, ""
				fn(s)
			default:
				lastMod, lastSize = fi.ModTime(), fi.Size()
			}
		} else if err != nil && onErr != nil && err.Error() != lastErr {
			lastErr = err.Error()
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
