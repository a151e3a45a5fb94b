package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/fsnotify/fsnotify"
)

// ErrNoPrimaryConfig is returned by Reconcile while the conf dir holds no
// usable network config: the primary CNI has not written one yet.
var ErrNoPrimaryConfig = errors.New("no CNI network config yet")

// Installer installs ambit-cni on the node. See the package doc.
type Installer struct {
	cfg Config
	log *slog.Logger
	// srcHash caches the plugin binary's digest, read once.
	srcHash []byte
}

// New validates cfg and returns an Installer.
func New(cfg Config) (*Installer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Installer{cfg: cfg, log: log}, nil
}

var confExts = map[string]bool{".conf": true, ".conflist": true, ".json": true}

// confFiles lists the config files of the conf dir in the order runtimes
// consider them.
func (in *Installer) confFiles() ([]string, error) {
	ents, err := os.ReadDir(in.cfg.ConfDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading CNI conf dir %s: %w", in.cfg.ConfDir, err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && confExts[filepath.Ext(e.Name())] {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Reconcile installs the binary and makes the primary network config end
// with exactly one up-to-date ambit-cni entry; it removes ambit-cni from every
// other config file. It reports whether it wrote anything. With no usable
// config in the conf dir it returns an error wrapping ErrNoPrimaryConfig.
func (in *Installer) Reconcile(ctx context.Context) (changed bool, err error) {
	if in.cfg.PluginBinary != "" {
		c, err := in.InstallBinary()
		if err != nil {
			return false, err
		}
		changed = changed || c
	}
	names, err := in.confFiles()
	if err != nil {
		return changed, err
	}
	primary, written := "", ""
	for _, name := range names {
		if name == written {
			continue // the primary, converted into this file just now
		}
		if err := ctx.Err(); err != nil {
			return changed, err
		}
		data, err := os.ReadFile(filepath.Join(in.cfg.ConfDir, name))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed under us; the watcher brings us back
			}
			return changed, fmt.Errorf("reading CNI config %s: %w", name, err)
		}
		if primary == "" {
			e, err := insertEntry(name, data, in.cfg.Entry)
			if err != nil {
				in.log.Warn("skipping unusable CNI config, as runtimes do", "file", name, "err", err)
				continue
			}
			primary = name
			if e.changed {
				if written, err = in.apply(name, e); err != nil {
					return changed, err
				}
				in.log.Info("added ambit-cni to the primary CNI config", "file", written, "from", name)
				changed = true
			}
			continue
		}
		if !hasEntry(data) {
			continue
		}
		e, err := removeEntry(name, data)
		if err != nil || !e.changed {
			continue
		}
		if _, err := in.apply(name, e); err != nil {
			return changed, err
		}
		in.log.Info("removed ambit-cni from a CNI config that is no longer primary", "file", name)
		changed = true
	}
	if primary == "" {
		return changed, fmt.Errorf("%w in %s: waiting for the primary CNI plugin (e.g. the cluster's network add-on) to write one", ErrNoPrimaryConfig, in.cfg.ConfDir)
	}
	return changed, nil
}

// Uninstall removes ambit-cni from every config file in the conf dir,
// restoring files the installer converted. The plugin binary stays: a newer
// agent may already rely on it (see RemoveBinary).
func (in *Installer) Uninstall(ctx context.Context) error {
	names, err := in.confFiles()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := os.ReadFile(filepath.Join(in.cfg.ConfDir, name))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("reading CNI config %s: %w", name, err)
		}
		if !hasEntry(data) {
			continue
		}
		e, err := removeEntry(name, data)
		if err != nil {
			return fmt.Errorf("removing ambit-cni from %s: %w", name, err)
		}
		if !e.changed {
			continue
		}
		target, err := in.apply(name, e)
		if err != nil {
			return err
		}
		in.log.Info("removed ambit-cni from CNI config", "file", target, "from", name)
	}
	return nil
}

// apply writes e and removes the original file when e renames it. The new
// file is written first so the conf dir never lacks a network config. It
// returns the name written.
func (in *Installer) apply(orig string, e edit) (string, error) {
	origPath := filepath.Join(in.cfg.ConfDir, orig)
	mode := fs.FileMode(0o644)
	if fi, err := os.Stat(origPath); err == nil {
		mode = fi.Mode().Perm()
	}
	target := e.name
	if target != orig {
		// Never overwrite someone else's file with a converted one.
		if data, err := os.ReadFile(filepath.Join(in.cfg.ConfDir, target)); err == nil && !hasEntry(data) && filepath.Ext(target) == ".conflist" {
			target = target[:len(target)-len(".conflist")] + "-ambit.conflist"
		}
	}
	if err := writeAtomic(filepath.Join(in.cfg.ConfDir, target), e.data, mode); err != nil {
		return "", fmt.Errorf("writing CNI config %s: %w", target, err)
	}
	if target != orig {
		if err := os.Remove(origPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("removing CNI config %s after writing %s: %w", orig, target, err)
		}
	}
	return target, nil
}

// InstallBinary copies the plugin binary into the bin dir unless an identical
// copy is there. It reports whether it wrote.
func (in *Installer) InstallBinary() (bool, error) {
	if in.srcHash == nil {
		h, err := fileHash(in.cfg.PluginBinary)
		if err != nil {
			return false, fmt.Errorf("reading ambit-cni binary %s (set %s): %w", in.cfg.PluginBinary, EnvPluginBinary, err)
		}
		in.srcHash = h
	}
	dst := filepath.Join(in.cfg.BinDir, PluginType)
	if h, err := fileHash(dst); err == nil && bytes.Equal(h, in.srcHash) {
		if fi, err := os.Stat(dst); err == nil && fi.Mode().Perm() == 0o755 {
			return false, nil
		}
	}
	data, err := os.ReadFile(in.cfg.PluginBinary)
	if err != nil {
		return false, fmt.Errorf("reading ambit-cni binary %s: %w", in.cfg.PluginBinary, err)
	}
	if err := os.MkdirAll(in.cfg.BinDir, 0o755); err != nil {
		return false, fmt.Errorf("creating CNI bin dir %s: %w", in.cfg.BinDir, err)
	}
	if err := writeAtomic(dst, data, 0o755); err != nil {
		return false, fmt.Errorf("installing ambit-cni into %s: %w", in.cfg.BinDir, err)
	}
	in.srcHash = nil // re-read next time in case the source image changed
	in.log.Info("installed ambit-cni binary", "path", dst)
	return true, nil
}

// RemoveBinary deletes the plugin binary from the bin dir.
func (in *Installer) RemoveBinary() error {
	err := os.Remove(filepath.Join(in.cfg.BinDir, PluginType))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing ambit-cni binary: %w", err)
	}
	return nil
}

func fileHash(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// writeAtomic writes data to path via a temp file in the same directory whose
// name no CNI runtime loads.
func writeAtomic(path string, data []byte, mode fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err = f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Run reconciles now, on every change in the conf dir (and the bin dir when
// a binary is installed) and every ResyncInterval, until ctx ends. Reconcile
// errors are logged and retried on the next event; Run returns an error only
// when it cannot watch. It does not uninstall on return.
func (in *Installer) Run(ctx context.Context) error {
	if err := os.MkdirAll(in.cfg.ConfDir, 0o755); err != nil {
		return fmt.Errorf("creating CNI conf dir %s: %w", in.cfg.ConfDir, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching CNI conf dir: %w", err)
	}
	defer w.Close()
	if err := w.Add(in.cfg.ConfDir); err != nil {
		return fmt.Errorf("watching CNI conf dir %s: %w", in.cfg.ConfDir, err)
	}
	if in.cfg.PluginBinary != "" {
		if err := os.MkdirAll(in.cfg.BinDir, 0o755); err != nil {
			return fmt.Errorf("creating CNI bin dir %s: %w", in.cfg.BinDir, err)
		}
		if err := w.Add(in.cfg.BinDir); err != nil {
			return fmt.Errorf("watching CNI bin dir %s: %w", in.cfg.BinDir, err)
		}
	}
	tick := time.NewTicker(in.cfg.ResyncInterval)
	defer tick.Stop()
	for {
		in.reconcileAndLog(ctx)
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("CNI conf dir watcher closed")
			}
			in.log.Debug("CNI dir changed", "event", ev.String())
			drain(w.Events)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("CNI conf dir watcher closed")
			}
			// An overflow lost events: the reconcile below catches up.
			in.log.Warn("watching CNI dirs", "err", err)
		case <-tick.C:
		}
	}
}

// drain consumes events already queued so a burst costs one reconcile.
func drain(ch <-chan fsnotify.Event) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

func (in *Installer) reconcileAndLog(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	if _, err := in.Reconcile(ctx); err != nil {
		if errors.Is(err, ErrNoPrimaryConfig) {
			in.log.Info("waiting for a CNI network config", "dir", in.cfg.ConfDir)
			return
		}
		in.log.Error("installing ambit-cni", "err", err)
	}
}
