package qcow2

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// AllocatedBytes is Allocated, falling back to `qemu-img map` for images these
// readers do not interpret, so every image gets an answer: what the backup drivers
// report as a point's bytes.
func AllocatedBytes(ctx context.Context, path string) (uint64, error) {
	if n, err := Allocated(path); !errors.Is(err, ErrUnsupported) {
		return n, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-img", "map", "-U", "-f", "qcow2", "--output=json", path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("qemu-img map %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	var ext []struct {
		Length uint64 `json:"length"`
		Depth  int    `json:"depth"`
		Data   bool   `json:"data"`
		Zero   bool   `json:"zero"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &ext); err != nil {
		return 0, fmt.Errorf("qemu-img map %s: unreadable output: %w", path, err)
	}
	var n uint64
	for _, e := range ext {
		if e.Depth == 0 && e.Data && !e.Zero {
			n += e.Length
		}
	}
	return n, nil
}
