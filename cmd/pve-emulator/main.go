// Command pve-emulator serves an emulated Proxmox VE cluster API (see internal/pveemu) over
// HTTPS, for demos and manual testing of autosnap's Proxmox driver.
//
//	pve-emulator --listen 127.0.0.1:8006 --nodes pve1,pve2 --guests 12
//
// The first node listens on --listen, the next ones on the following ports. The
// certificate fingerprint and the API token are printed on stdout, one "key: value" per
// line, then the emulator runs until SIGINT/SIGTERM.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/autosnap/autosnap/internal/pveemu"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8006", "address of the first node's API; further nodes use the next ports")
	nodes := flag.String("nodes", "pve1,pve2", "comma-separated node names")
	guests := flag.Int("guests", 12, "number of demo guests (VMs and containers) to seed")
	taskDuration := flag.Duration("task-duration", 200*time.Millisecond, "how long snapshot, rollback and delete tasks run")
	token := flag.String("token", "", "API token as user@realm!tokenid=secret (default root@pam!demo=<random UUID>)")
	password := flag.String("password", "", "password of root@pam for ticket login (default: random)")
	version := flag.String("version", "8.2.4", "PVE version to report")
	authDelay := flag.Duration("auth-delay", 0, "delay of every 401 (real PVE: 3s; default 20ms)")
	verbose := flag.Bool("v", false, "log every request on stderr")
	flag.Parse()

	if *token == "" {
		*token = "root@pam!demo=" + uuid()
	}
	tokenID, secret, ok := strings.Cut(*token, "=")
	if !ok || !strings.Contains(tokenID, "!") {
		log.Fatalf("--token must look like user@realm!tokenid=secret")
	}
	if *password == "" {
		*password = uuid()[:12]
	}
	opts := pveemu.Options{
		Nodes:            strings.Split(*nodes, ","),
		TaskDuration:     *taskDuration,
		Users:            map[string]string{"root@pam": *password},
		Tokens:           map[string]string{tokenID: secret},
		Version:          *version,
		AuthFailureDelay: *authDelay,
	}
	if *verbose {
		opts.Logf = log.Printf
	}
	c := pveemu.New(opts)
	defer c.Close()
	c.SeedDemo(*guests)

	host, portStr, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatalf("--listen: %v", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		log.Fatalf("--listen: %v", err)
	}
	var addrs []string
	for i, n := range c.Nodes() {
		p := 0
		if port != 0 {
			p = port + i
		}
		addr, err := c.ListenNodeOn(n, net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			log.Fatalf("node %s: %v", n, err)
		}
		addrs = append(addrs, addr)
		fmt.Printf("node: %s https://%s/api2/json\n", n, addr)
	}
	fmt.Printf("hosts: %s\n", strings.Join(addrs, ","))
	fmt.Printf("fingerprint: %s\n", c.Fingerprint())
	fmt.Printf("token: %s\n", *token)
	fmt.Printf("user: root@pam\npassword: %s\n", *password)
	fmt.Printf("version: %s\n", *version)
	fmt.Printf("guests: %d\nready\n", *guests)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

func uuid() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
