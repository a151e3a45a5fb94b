package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// parseMemoryLimit reads --memory-limit: "auto" (90 % of the cgroup's
// memory limit from cgroupLimit, 0 when there is none), "0", or bytes with
// an optional Ki, Mi or Gi suffix.
func parseMemoryLimit(v string, cgroupLimit func() (int64, bool)) (int64, error) {
	orig := v
	v = strings.TrimSpace(v)
	if v == "auto" {
		if l, ok := cgroupLimit(); ok {
			return l / 10 * 9, nil
		}
		return 0, nil
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}} {
		if s, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = s, u.m
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not auto, 0 or a size such as 512Mi", orig)
	}
	return n * mult, nil
}

// cgroupLimit is cgroupMemoryLimit; tests replace it.
var cgroupLimit = cgroupMemoryLimit

// cgroupMemoryLimit reads the memory limit of the process's cgroup (v2
// memory.max, else v1 memory.limit_in_bytes); false when there is none.
func cgroupMemoryLimit() (int64, bool) {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		// cgroup v1 reports "no limit" as a huge page-aligned number.
		if err != nil || n <= 0 || n >= 1<<60 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// applyMemoryLimit sets the runtime's soft limit unless GOMEMLIMIT is set.
func applyMemoryLimit(limit int64, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		log.Info("memory limit from GOMEMLIMIT", "limit", os.Getenv("GOMEMLIMIT"))
		return
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Info("memory limit set", "bytes", limit)
	}
}

// reclaimMemory gives memory back to the OS after a load has passed: when
// the heap holds more than threshold bytes of free, unreleased spans for
// two checks in a row (a burst of connections came and went), it returns
// them with debug.FreeOSMemory, at most once per interval. The runtime's
// own scavenger does the same, but over minutes.
func reclaimMemory(ctx context.Context, interval time.Duration, threshold uint64, log *slog.Logger) {
	samples := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	t := time.NewTicker(interval)
	defer t.Stop()
	over := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(samples)
		if samples[0].Value.Kind() != metrics.KindUint64 {
			log.Warn("runtime metric missing; memory reclaim off", "error", errors.New(samples[0].Name))
			return
		}
		if free := samples[0].Value.Uint64(); free > threshold {
			if over++; over >= 2 {
				debug.FreeOSMemory()
				log.Debug("returned free heap memory to the OS", "bytes", free)
				over = 0
			}
		} else {
			over = 0
		}
	}
}
