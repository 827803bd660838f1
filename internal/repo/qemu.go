package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/qcow2"
)

// Crash points of this package (see internal/crash): each names the moment just
// after what it says happened.
const (
	PointCommitManifest = "repo.commit.manifest" // manifest in the .partial dir, not yet renamed
	PointPruneJournaled = "repo.prune.journaled" // prune plan journalled, nothing changed
	PointPruneRebased   = "repo.prune.rebased"   // one dependant rebased, journal not yet advanced
	PointPruneManifests = "repo.prune.manifests" // every dependant rebased and its manifest rewritten
	PointPruneRemoving  = "repo.prune.removing"  // one pruned point renamed to .removing-*, not yet deleted
)

func hit(name string) {
	crash.Point(name)
	testPoint(name)
}

// imgInfo is the part of `qemu-img info --output=json` the repository reads.
type imgInfo struct {
	Filename        string `json:"filename"`
	Format          string `json:"format"`
	VirtualSize     uint64 `json:"virtual-size"`
	ActualSize      uint64 `json:"actual-size"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

// qemuImg runs qemu-img with args and returns its standard output; the error carries
// its standard error.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return out.Bytes(), fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// imageInfo reads one image's header (not its backing chain).
func imageInfo(ctx context.Context, file string) (imgInfo, error) {
	out, err := qemuImg(ctx, "info", "--output=json", "--force-share", file)
	if err != nil {
		return imgInfo{}, err
	}
	var i imgInfo
	if err := json.Unmarshal(out, &i); err != nil {
		return imgInfo{}, fmt.Errorf("qemu-img info %s: %w", file, err)
	}
	return i, nil
}

// chainInfo reads the image and every file of its backing chain, top first.
func chainInfo(ctx context.Context, file string) ([]imgInfo, error) {
	out, err := qemuImg(ctx, "info", "--output=json", "--force-share", "--backing-chain", file)
	if err != nil {
		return nil, err
	}
	var is []imgInfo
	if err := json.Unmarshal(out, &is); err != nil {
		return nil, fmt.Errorf("qemu-img info --backing-chain %s: %w", file, err)
	}
	return is, nil
}

// headerInfo reads format, virtual size and backing file of one image from its
// qcow2 header in-process (internal/qcow2), and through qemu-img info for anything
// else (another format, a header it does not interpret), whose answer then names
// the format.
func headerInfo(ctx context.Context, file string) (imgInfo, error) {
	h, err := qcow2.ReadHeader(file)
	if err != nil {
		return imageInfo(ctx, file)
	}
	return imgInfo{Filename: file, Format: "qcow2", VirtualSize: h.Size, BackingFilename: h.Backing, BackingFormat: h.BackingFormat}, nil
}
