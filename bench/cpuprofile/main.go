// Command cpuprofile runs autosnap's command line in-process under the CPU profiler,
// for finding where autosnap's own CPU goes (bench/status.sh measures how much).
//
//	go run ./bench/cpuprofile -o /tmp/cpu.out -n 3 -- --vmid 'astbench-st-%' status
//	go tool pprof -top /tmp/cpu.out
//	go run ./bench/cpuprofile -o /tmp/cpu.out -mem /tmp/mem.out -- status; go tool pprof -sample_index=alloc_space -top /tmp/mem.out
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/autosnap/autosnap/internal/cli"
	_ "github.com/autosnap/autosnap/internal/driver/libvirt"
)

// init applies cmd/autosnap's runtime settings (runtime.go there), so the profile is
// of the process bench/status.sh measures; GOMAXPROCS and GOGC still decide when set.
func init() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}

func main() {
	out := flag.String("o", "cpu.out", "profile file")
	n := flag.Int("n", 1, "runs")
	mem := flag.String("mem", "", "also write an allocation profile (alloc_space) to this file")
	flag.Parse()
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c0, t0 := cpu(), time.Now()
	for range *n {
		if rc := cli.Main(context.Background(), flag.Args(), io.Discard, os.Stderr); rc != 0 {
			fmt.Fprintln(os.Stderr, "exit status", rc)
		}
	}
	pprof.StopCPUProfile()
	if *mem != "" {
		if err := writeHeap(*mem); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Printf("per run: wall %.3f s, CPU %.3f s\n", time.Since(t0).Seconds()/float64(*n), (cpu()-c0).Seconds()/float64(*n))
}

// writeHeap writes the allocation profile; go tool pprof -sample_index=alloc_space reads
// where the runs allocated, which is what page faults and GC cost in status follow.
func writeHeap(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func cpu() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
