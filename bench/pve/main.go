// Command pve benchmarks autosnap's Proxmox VE driver against the emulator: N guests
// (VMs and containers over three nodes) whose snapshot and removal tasks take -task
// each, and one `snap --keep 2` round per guest, with --max-parallel 1 and then
// --max-parallel P on the same cluster. Every guest starts each round with two
// snapshots of the label, so a round is one create task and one delete task per guest.
// It prints both wall times and their ratio (goal ≥ 5 with -par 8).
//
//	go run ./bench/pve [-n 50] [-task 200ms] [-par 8]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/cli"
	_ "github.com/autosnap/autosnap/internal/driver/proxmox"
	"github.com/autosnap/autosnap/internal/pveemu"
)

const (
	tokenID = "root@pam!bench"
	secret  = "0b3f1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	label   = "bench"
)

func main() {
	n := flag.Int("n", 50, "guests")
	task := flag.Duration("task", 200*time.Millisecond, "duration of every snapshot and removal task")
	par := flag.Int("par", 8, "--max-parallel of the parallel run")
	flag.Parse()

	nodes := []string{"pve1", "pve2", "pve3"}
	c := pveemu.New(pveemu.Options{Nodes: nodes, TaskDuration: *task, Tokens: map[string]string{tokenID: secret}})
	defer c.Close()
	var hosts []string
	for _, nd := range nodes {
		addr, err := c.ListenNode(nd)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		hosts = append(hosts, addr)
	}
	old := time.Now().Add(-48 * time.Hour)
	for i := 0; i < *n; i++ {
		id := 1000 + i
		kind := []string{"qemu", "lxc"}[i%2]
		c.AddGuest(pveemu.Guest{Node: nodes[i%len(nodes)], VMID: id, Name: fmt.Sprintf("bench-%d", id), Kind: kind, Status: "running",
			Agent: "1", AgentRunning: true})
		for k := 0; k < 2; k++ {
			t := old.Add(time.Duration(k) * time.Hour)
			c.AddSnapshot(id, "auto"+label+t.Format("060102150405")+"000", "cv4pve-autosnap", t, false)
		}
	}

	round := func(parallel int) time.Duration {
		var out, errb bytes.Buffer
		args := []string{"--host", strings.Join(hosts, ","), "--api-token", tokenID + "=" + secret, "--fingerprint", c.Fingerprint(),
			"--timestamp-format", "yyMMddHHmmssfff", "--timeout", "60", "--max-parallel", fmt.Sprint(parallel),
			"--vmid", "@all", "snap", "--label", label, "--keep", "2"}
		start := time.Now()
		code := cli.Main(context.Background(), args, &out, &errb)
		took := time.Since(start)
		if code != 0 {
			fmt.Fprintf(os.Stderr, "--max-parallel %d: exit %d\n%s%s", parallel, code, out.String(), errb.String())
			os.Exit(1)
		}
		for i := 0; i < *n; i++ {
			if got := len(c.Snapshots(1000 + i)); got != 2 {
				fmt.Fprintf(os.Stderr, "--max-parallel %d: guest %d has %d snapshots, want 2\n", parallel, 1000+i, got)
				os.Exit(1)
			}
		}
		return took
	}
	serial := round(1)
	parallel := round(*par)
	fmt.Printf("guests %d, task %s, snap --keep 2 (1 create + 1 removal per guest)\n", *n, *task)
	fmt.Printf("--max-parallel 1: %s\n", serial.Round(time.Millisecond))
	fmt.Printf("--max-parallel %d: %s\n", *par, parallel.Round(time.Millisecond))
	fmt.Printf("speed-up: %.1fx\n", serial.Seconds()/parallel.Seconds())
}
