// Command rpccount runs a command whose libvirt connection goes through a counting
// proxy (internal/rpctrace) and prints the RPCs it made, by procedure.
//
//	go run ./bench/rpccount [-per N] -- bin/autosnap --host '{uri}' --vmid @all status
//
// Every "{uri}" in the command is replaced by the proxy's libvirt URI. -per N also
// prints calls per unit (e.g. per guest and round).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/autosnap/autosnap/internal/rpctrace"
)

func main() {
	per := flag.Int("per", 0, "also print calls divided by this number")
	upstream := flag.String("upstream", rpctrace.DefaultUpstream, "libvirtd's socket")
	seq := flag.Bool("seq", false, "also print the calls in order: start (from the first call), wait for the reply, procedure")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: rpccount [-per N] [-seq] -- command args ('{uri}' is replaced)")
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "rpccount")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	p, err := rpctrace.Start(filepath.Join(dir, "libvirt.sock"), *upstream)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	args := flag.Args()
	for i := range args {
		args[i] = strings.ReplaceAll(args[i], "{uri}", p.URI())
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	runErr := cmd.Run()
	p.Close()
	if *seq {
		calls := p.Sequence()
		for _, c := range calls {
			fmt.Fprintf(os.Stderr, "%9.1f ms %8.1f ms  %s\n", float64(c.Start.Sub(calls[0].Start).Microseconds())/1000, float64(c.Wait.Microseconds())/1000, c.Name)
		}
	}
	fmt.Fprint(os.Stderr, rpctrace.Format(p.Stats(), *per))
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "command:", runErr)
		os.Exit(1)
	}
}
