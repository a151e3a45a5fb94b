package config

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults of WatchDir.
const (
	// DefaultDebounce is how long WatchDir waits after a file event for more
	// events before it reloads (writers often touch several files).
	DefaultDebounce = 100 * time.Millisecond
	// DefaultPollInterval is how often WatchDir compares file names, sizes
	// and modification times, which catches what file events miss (the
	// directory created late, replaced by a rename, network filesystems).
	DefaultPollInterval = time.Second
)

func configFile(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// listFiles returns the config files of dir, sorted by name.
func listFiles(dir string) ([]fs.DirEntry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []fs.DirEntry
	for _, e := range ents {
		if configFile(e.Name()) && !e.IsDir() {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// LoadDir reads every config file in dir (see the package doc) into a
// snapshot. Objects that fail to decode or validate are left out, each
// reported by an *ObjectError; the rest apply. An unreadable dir yields an
// empty snapshot and that error.
func LoadDir(dir string) (*Snapshot, []error) {
	s, errs, _ := loadDir(dir)
	return s, errs
}

type origin struct {
	file string
	doc  int
}

// loadDir is LoadDir plus a digest of the files' names and contents.
func loadDir(dir string) (*Snapshot, []error, [32]byte) {
	snap := NewSnapshot()
	h := sha256.New()
	files, err := listFiles(dir)
	if err != nil {
		fmt.Fprintf(h, "error %v", err)
		return snap, []error{fmt.Errorf("reading config dir %s: %w", dir, err)}, [32]byte(h.Sum(nil))
	}
	var errs []error
	seen := map[string]origin{}
	for _, f := range files {
		path := filepath.Join(dir, f.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed since listed; the next load sees the rest
			}
			errs = append(errs, fmt.Errorf("reading config file %s: %w", path, err))
			continue
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f.Name(), len(data))
		h.Write(data)
		objs, derrs := DecodeFile(path, data)
		errs = append(errs, derrs...)
		for _, d := range objs {
			o := d.Object
			kind := reflect.TypeOf(o).Elem().Name()
			k := kind + " " + Key(o.GetNamespace(), o.GetName())
			if !snap.Add(o) {
				first := seen[k]
				errs = append(errs, &ObjectError{File: path, Doc: d.Doc, Item: d.Item, Kind: kind,
					Namespace: o.GetNamespace(), Name: o.GetName(),
					Err: fmt.Errorf("%w: already defined in %s document %d; the first definition applies", ErrDuplicate, first.file, first.doc)})
				continue
			}
			seen[k] = origin{path, d.Doc}
		}
	}
	return snap, errs, [32]byte(h.Sum(nil))
}

// fingerprint summarises dir's config files by name, size and mtime.
func fingerprint(dir string) string {
	files, err := listFiles(dir)
	if err != nil {
		return "error: " + err.Error()
	}
	var b strings.Builder
	for _, f := range files {
		fi, err := f.Info()
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "%s %d %d\n", f.Name(), fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// WatchDir loads dir, calls fn with the snapshot and the load errors, and
// calls fn again after each change of the files' contents, until ctx ends.
// Changes are seen through file events (debounced by DefaultDebounce) and
// by polling every DefaultPollInterval; a reload whose files are byte for
// byte those of the last call does not call fn. fn runs on WatchDir's
// goroutine, one call at a time. A dir that does not exist yet is reported
// to fn as an error and watched for.
func WatchDir(ctx context.Context, dir string, fn func(*Snapshot, []error)) error {
	return watchDir(ctx, dir, DefaultDebounce, DefaultPollInterval, fn)
}

func watchDir(ctx context.Context, dir string, debounce, poll time.Duration, fn func(*Snapshot, []error)) error {
	var last [32]byte
	first := true
	reload := func() {
		snap, errs, sum := loadDir(dir)
		if !first && sum == last {
			return
		}
		first, last = false, sum
		fn(snap, errs)
	}

	var events <-chan fsnotify.Event
	var werrs <-chan error
	var w *fsnotify.Watcher
	watching := false
	if nw, err := fsnotify.NewWatcher(); err == nil {
		w = nw
		defer w.Close()
		events, werrs = w.Events, w.Errors
	}
	addWatch := func() {
		if w != nil && !watching {
			watching = w.Add(dir) == nil
		}
	}
	addWatch()
	fp := fingerprint(dir)
	reload()

	tick := time.NewTicker(poll)
	defer tick.Stop()
	var debounceC <-chan time.Time
	var timer *time.Timer
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if timer == nil {
				timer = time.NewTimer(debounce)
			} else {
				timer.Reset(debounce)
			}
			debounceC = timer.C
		case _, ok := <-werrs:
			if !ok {
				werrs = nil
			}
			// Overflow or similar: the poll below catches up.
		case <-debounceC:
			debounceC = nil
			fp = fingerprint(dir)
			reload()
		case <-tick.C:
			addWatch()
			if nfp := fingerprint(dir); nfp != fp {
				fp = nfp
				reload()
			}
		}
	}
}

// DirSource is the local-mode Source: a watched directory of YAML files.
type DirSource struct {
	dir     string
	log     *slog.Logger
	changes chan struct{}

	mu   sync.Mutex
	snap *Snapshot
	errs []error
}

var _ Source = (*DirSource)(nil)

// NewDirSource returns a Source reading dir. Rejected objects are logged at
// warning level on log (nil: discarded) and kept for Errors.
func NewDirSource(dir string, log *slog.Logger) *DirSource {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DirSource{dir: dir, log: log, changes: make(chan struct{}, 1), snap: NewSnapshot()}
}

// Run watches the directory until ctx ends (see WatchDir).
func (s *DirSource) Run(ctx context.Context) error {
	return WatchDir(ctx, s.dir, s.publish)
}

func (s *DirSource) publish(snap *Snapshot, errs []error) {
	for _, err := range errs {
		var oe *ObjectError
		if errors.As(err, &oe) {
			s.log.Warn("config object rejected", "file", oe.File, "document", oe.Doc, "object", oe.Object(), "field", oe.Field, "error", oe.Err)
		} else {
			s.log.Warn("config dir", "dir", s.dir, "error", err)
		}
	}
	s.log.Info("config loaded", "dir", s.dir, "objects", snap.Len(), "rejected", len(errs))
	s.mu.Lock()
	s.snap, s.errs = snap, errs
	s.mu.Unlock()
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// Snapshot returns the latest snapshot (empty before the first load).
func (s *DirSource) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Errors returns the rejections of the latest load.
func (s *DirSource) Errors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs
}

// Changes receives after each new snapshot (buffer of one, coalescing).
func (s *DirSource) Changes() <-chan struct{} { return s.changes }
