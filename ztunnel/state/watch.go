package state

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// WatchOptions configure Watch.
type WatchOptions struct {
	// Interval between checks of the file. Default 500 ms.
	Interval time.Duration
	// Logger receives reload results. Default slog.Default.
	Logger *slog.Logger
	// Reloaded, when set, is called after each attempt to apply a changed
	// file, with nil on success or the reason the last good state was kept.
	// It runs on Watch's goroutine.
	Reloaded func(error)
}

// Watch keeps s equal to the local config file at path until ctx is done,
// then returns ctx's error. It applies the file at once, then checks it
// every Interval: when its size, modification time or identity changed
// and its content differs from the last attempt, it is re-read, parsed,
// validated and Set as a whole. A file that cannot be read, parsed or
// validated changes nothing: the last good state stays and the error (with
// file and field) is logged. Polling rather than inotify also follows
// ConfigMap-style symlink swaps.
func Watch(ctx context.Context, path string, s *Store, opts WatchOptions) error {
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	w := watcher{path: path, store: s, log: log.With("file", path), reloaded: opts.Reloaded}
	w.check()
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			w.check()
		}
	}
}

type watcher struct {
	path     string
	store    *Store
	log      *slog.Logger
	reloaded func(error)

	stat    os.FileInfo
	sum     [sha256.Size]byte
	haveSum bool
	lastErr string
}

func (w *watcher) check() {
	st, err := os.Stat(w.path)
	if err != nil {
		w.fail(err)
		return
	}
	if w.stat != nil && os.SameFile(w.stat, st) && st.ModTime().Equal(w.stat.ModTime()) && st.Size() == w.stat.Size() {
		return
	}
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.fail(err)
		return
	}
	w.stat = st
	sum := sha256.Sum256(data)
	if w.haveSum && bytes.Equal(sum[:], w.sum[:]) {
		return
	}
	w.sum, w.haveSum = sum, true
	snap, err := ParseConfig(data)
	if err == nil {
		err = w.store.Validate(snap)
	}
	if err != nil {
		w.fail(fmt.Errorf("local config %s: %w", w.path, err))
		return
	}
	err = w.store.Set(snap)
	w.lastErr = ""
	w.log.Info("applied local config", "workloads", len(snap.Workloads), "services", len(snap.Services), "policies", len(snap.Policies), "version", w.store.Load().Version())
	if w.reloaded != nil {
		w.reloaded(err)
	}
}

// fail logs err (once while it repeats) and keeps the current state.
func (w *watcher) fail(err error) {
	if msg := err.Error(); msg != w.lastErr {
		w.lastErr = msg
		w.log.Error("local config not applied; keeping the last good state", "error", err)
	}
	if w.reloaded != nil {
		w.reloaded(err)
	}
}
