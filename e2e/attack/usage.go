package attack

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Usage is one sample of a process's resources: what an attack must not
// exhaust (the suite's and the bench's figures).
type Usage struct {
	FDs, Threads int
	RSS          int64 // bytes
	// Dead: the process is gone or a zombie.
	Dead bool
}

// String is "fds/threads/RSS in MiB", or "dead".
func (u Usage) String() string {
	if u.Dead {
		return "dead"
	}
	return fmt.Sprintf("%d/%d/%dM", u.FDs, u.Threads, u.RSS>>20)
}

// Max is the per-field maximum of u and o; dead if either is.
func (u Usage) Max(o Usage) Usage {
	return Usage{FDs: max(u.FDs, o.FDs), Threads: max(u.Threads, o.Threads), RSS: max(u.RSS, o.RSS), Dead: u.Dead || o.Dead}
}

// SampleUsage reads a process's open files (/proc/PID/fd), threads and RSS
// (/proc/PID/status).
func SampleUsage(pid int) Usage {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Usage{Dead: true}
	}
	var u Usage
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		f := strings.Fields(v)
		if !ok || len(f) == 0 {
			continue
		}
		switch k {
		case "State":
			if f[0] == "Z" || f[0] == "X" {
				return Usage{Dead: true}
			}
		case "Threads":
			u.Threads, _ = strconv.Atoi(f[0])
		case "VmRSS":
			kb, _ := strconv.ParseInt(f[0], 10, 64)
			u.RSS = kb << 10
		}
	}
	d, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return Usage{Dead: true}
	}
	defer d.Close()
	for {
		names, err := d.Readdirnames(4096)
		u.FDs += len(names)
		if err != nil {
			break
		}
	}
	return u
}

// Baseline samples pid n times, interval apart, and returns the median of
// each field (dead if any sample was).
func Baseline(pid, n int, interval time.Duration) Usage {
	var fds, threads []int
	var rss []int64
	for i := 0; i < n; i++ {
		if i > 0 {
			time.Sleep(interval) // spacing the samples
		}
		u := SampleUsage(pid)
		if u.Dead {
			return u
		}
		fds, threads, rss = append(fds, u.FDs), append(threads, u.Threads), append(rss, u.RSS)
	}
	sort.Ints(fds)
	sort.Ints(threads)
	sort.Slice(rss, func(i, j int) bool { return rss[i] < rss[j] })
	return Usage{FDs: fds[n/2], Threads: threads[n/2], RSS: rss[n/2]}
}
