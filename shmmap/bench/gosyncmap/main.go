// Command gosyncmap is shmmap bench's Go peer: the load of the article that
// shmmap answers, run on Go's sync.Map inside one process.
//
// The map holds the int keys 0..keys-1, each with the value 1. One goroutine
// calls Range over the whole map in a loop, in turns with nothing else
// running (idle) and while a second goroutine writes as fast as it can, half
// of the writes overwriting a random existing key and half storing a new key
// (keys are never deleted, every value stays 1): the machine's speed moves in
// phases that last seconds, and taken in turns, idle and loaded Ranges see
// the same ones. It prints one JSON object on stdout: Range times idle and
// under that load, and the writer's writes per second (of the time it
// wrote) with its CPU time per write.
//
// Every Range is checked: it must see at least keys entries, each with the
// value 1. sync.Map's Range is not a snapshot, so nothing stronger holds.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// rusageThread is RUSAGE_THREAD from <sys/resource.h>: the syscall package
// names only RUSAGE_SELF and RUSAGE_CHILDREN.
const rusageThread = 1

// writeBurst is how many writes the writer makes between looks at the stop flag.
const writeBurst = 64

// turns is how many idle and loaded stretches the Ranges take in turn
// (shmmap bench's writes.TURNS).
const turns = 5

// rangeStats describes the Ranges of one phase. The writer's new keys grow
// the map under load, so each Range's time per entry seen is what compares
// with an idle Range, not its whole time.
type rangeStats struct {
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	P50NsPerEntry float64 `json:"p50_ns_per_entry"`
	P99NsPerEntry float64 `json:"p99_ns_per_entry"`
	P50Entries    int     `json:"p50_entries_seen"`
	Iterations    int     `json:"iterations"`
	MaxEntries    int     `json:"max_entries_seen"`
}

type report struct {
	GoVersion            string     `json:"go_version"`
	GOMAXPROCS           int        `json:"gomaxprocs"`
	Keys                 int        `json:"keys"`
	Idle                 rangeStats `json:"idle"`
	UnderLoad            rangeStats `json:"under_load"`
	Writes               int64      `json:"writes"`
	WritesPerS           float64    `json:"writes_per_s"`
	WriterCPUUsPerWrite  float64    `json:"writer_cpu_us_per_write"`
	ProcessCPUUsPerWrite float64    `json:"process_cpu_us_per_write"`
	Check                string     `json:"check"`
}

// fullRange ranges over m once and checks what it saw.
func fullRange(m *sync.Map, keys int) (time.Duration, int, error) {
	started := time.Now()
	count, sum := 0, 0
	m.Range(func(_, v any) bool {
		count++
		sum += v.(int)
		return true
	})
	elapsed := time.Since(started)
	if count < keys || sum != count {
		return elapsed, count, fmt.Errorf("Range saw %d entries summing to %d, expected at least %d entries, each 1", count, sum, keys)
	}
	return elapsed, count, nil
}

// ranges holds the Ranges of one phase, over all its stretches.
type ranges struct {
	times, perEntry []float64
	counts          []int
}

// rangeFor ranges in a loop for at least d and three times, adding to r.
func (r *ranges) rangeFor(m *sync.Map, keys int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for n := 0; time.Now().Before(deadline) || n < 3; n++ {
		t, count, err := fullRange(m, keys)
		if err != nil {
			return err
		}
		r.times = append(r.times, float64(t.Nanoseconds()))
		r.perEntry = append(r.perEntry, float64(t.Nanoseconds())/float64(count))
		r.counts = append(r.counts, count)
	}
	return nil
}

// stats sums up r's Ranges (it sorts them).
func (r *ranges) stats() rangeStats {
	times, perEntry, counts := r.times, r.perEntry, r.counts
	sort.Float64s(times)
	sort.Float64s(perEntry)
	sort.Ints(counts)
	p99 := len(times) * 99 / 100
	if p99 >= len(times) {
		p99 = len(times) - 1
	}
	mid := len(times) / 2
	return rangeStats{P50Ms: times[mid] / 1e6, P99Ms: times[p99] / 1e6,
		P50NsPerEntry: perEntry[mid], P99NsPerEntry: perEntry[p99],
		P50Entries: counts[mid], Iterations: len(times), MaxEntries: counts[len(counts)-1]}
}

func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type writerResult struct {
	writes  int64
	elapsed time.Duration
	cpu     time.Duration
}

// turn lets the writer write (paused false) or makes it wait (paused true)
// until a resume or the stop. resume holds one token: a resume sent while
// the writer was not waiting is found by its next wait, which looks at
// paused again.
type turn struct {
	paused atomic.Bool
	stop   atomic.Bool
	resume chan struct{}
}

func (t *turn) wake() {
	select {
	case t.resume <- struct{}{}:
	default:
	}
}

func (t *turn) pause()   { t.paused.Store(true) }
func (t *turn) unpause() { t.paused.Store(false); t.wake() }
func (t *turn) end()     { t.stop.Store(true); t.wake() }

// writer stores while its turn lasts, until the end: half overwrites of a
// random existing key, half new keys. It runs on its own OS thread so that
// RUSAGE_THREAD measures it alone; elapsed counts the time it wrote.
func writer(m *sync.Map, keys int, t *turn, ready chan<- struct{}, done chan<- writerResult) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rng := rand.New(rand.NewSource(1))
	next := keys
	var writes int64
	var elapsed time.Duration
	cpu0 := cpuTime(rusageThread)
	close(ready)
	for !t.stop.Load() {
		for t.paused.Load() && !t.stop.Load() {
			<-t.resume
		}
		started := time.Now()
		for !t.paused.Load() && !t.stop.Load() {
			for i := 0; i < writeBurst; i++ {
				if rng.Intn(2) == 0 {
					m.Store(rng.Intn(next), 1)
				} else {
					m.Store(next, 1)
					next++
				}
			}
			writes += writeBurst
		}
		elapsed += time.Since(started)
	}
	done <- writerResult{writes, elapsed, cpuTime(rusageThread) - cpu0}
}

func run(keys int, d time.Duration) report {
	rep := report{GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), Keys: keys, Check: "ok"}
	var m sync.Map
	for k := 0; k < keys; k++ {
		m.Store(k, 1)
	}
	t := &turn{resume: make(chan struct{}, 1)}
	t.pause()
	ready, done := make(chan struct{}), make(chan writerResult, 1)
	processCPU := cpuTime(syscall.RUSAGE_SELF)
	go writer(&m, keys, t, ready, done)
	<-ready
	var idle, load ranges
	var err error
	for i := 0; i < turns && err == nil; i++ {
		t.pause()
		if err = idle.rangeFor(&m, keys, d/2/turns); err != nil {
			rep.Check = "FAILED: idle: " + err.Error()
			break
		}
		t.unpause()
		if err = load.rangeFor(&m, keys, d/turns); err != nil {
			rep.Check = "FAILED: under load: " + err.Error()
		}
	}
	t.end()
	w := <-done
	processCPU = cpuTime(syscall.RUSAGE_SELF) - processCPU
	if err != nil {
		return rep
	}
	rep.Idle, rep.UnderLoad = idle.stats(), load.stats()
	rep.Writes = w.writes
	if w.writes > 0 {
		rep.WritesPerS = float64(w.writes) / w.elapsed.Seconds()
		rep.WriterCPUUsPerWrite = float64(w.cpu.Nanoseconds()) / 1e3 / float64(w.writes)
		rep.ProcessCPUUsPerWrite = float64(processCPU.Nanoseconds()) / 1e3 / float64(w.writes)
	}
	return rep
}

func main() {
	keys := flag.Int("keys", 100000, "int keys in the map before the load starts")
	d := flag.Duration("duration", 3*time.Second, "how long Range runs under the load, in all (idle: half of it)")
	flag.Parse()
	if *keys < 1 || *d <= 0 {
		fmt.Fprintln(os.Stderr, "gosyncmap: -keys and -duration must be positive")
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(run(*keys, *d)); err != nil {
		fmt.Fprintln(os.Stderr, "gosyncmap:", err)
		os.Exit(1)
	}
}
