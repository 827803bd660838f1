// Command autosnap takes automatic, retention-managed snapshots of KVM/QEMU guests.
// This file only wires: it links the drivers, installs signal handling and maps the
// result to the exit status.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/autosnap/autosnap/internal/cli"
	_ "github.com/autosnap/autosnap/internal/driver/libvirt"
	_ "github.com/autosnap/autosnap/internal/driver/proxmox"
	_ "github.com/autosnap/autosnap/internal/driver/qmp"
)

func main() {
	// SIGINT/SIGTERM cancel the context: running merges are aborted cleanly and every
	// guest is left resumed and thawed before autosnap exits.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// Run as cv4pve-autosnap (the symlink `make install` creates), it starts in cv4pve mode.
	code := cli.MainNamed(ctx, os.Args[0], os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
