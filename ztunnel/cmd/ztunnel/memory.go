package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
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

// reclaimMemory gives memory back to the OS after a load has passed. A
// burst of connections grows the heap; once it has passed, nothing makes
// the runtime collect and return that memory soon (no allocation, no GC;
// the scavenger works over minutes). Every interval it samples the heap
// and the goroutine count (a proxy for connections in flight) and, when
// reclaim says so, runs debug.FreeOSMemory (a GC, then every free span
// returned).
func reclaimMemory(ctx context.Context, interval time.Duration, threshold uint64, log *slog.Logger) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	heap := func() (uint64, bool) {
		metrics.Read(samples)
		var total uint64
		for _, s := range samples {
			if s.Value.Kind() != metrics.KindUint64 {
				return 0, false
			}
			total += s.Value.Uint64()
		}
		return total, true
	}
	h, ok := heap()
	if !ok {
		log.Warn("runtime heap metrics missing; memory reclaim off", "error", errors.New(samples[0].Name))
		return
	}
	r := reclaimer{threshold: threshold, base: h, peak: runtime.NumGoroutine()}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h, _ := heap()
		if !r.observe(h, runtime.NumGoroutine()) {
			continue
		}
		// Two collections: the first moves sync.Pool contents (the relays'
		// copy buffers) to the pools' victim caches, the second (inside
		// FreeOSMemory) frees them, then every free span is returned.
		runtime.GC()
		debug.FreeOSMemory()
		after, _ := heap()
		r.reclaimed(after, runtime.NumGoroutine())
		log.Debug("returned heap memory to the OS after a load", "heap_before", h, "heap_after", after)
	}
}

// reclaimer decides when to reclaim: the heap is more than threshold above
// its size after the last reclaim (base), and the goroutines have fallen
// to half their peak since then (the load that grew it has passed).
type reclaimer struct {
	threshold uint64
	base      uint64
	peak      int
}

// observe takes a sample and reports whether to reclaim now.
func (r *reclaimer) observe(heap uint64, goroutines int) bool {
	r.peak = max(r.peak, goroutines)
	if heap < r.base {
		r.base = heap
	}
	return heap > r.base+r.threshold && 2*goroutines <= r.peak
}

// reclaimed records the state after a reclaim.
func (r *reclaimer) reclaimed(heap uint64, goroutines int) {
	r.base, r.peak = heap, goroutines
}
