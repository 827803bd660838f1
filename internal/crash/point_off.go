//go:build !crashtest

package crash

// Point marks a crash point; it does nothing in the shipped binary.
func Point(string) {}

// Enabled reports whether this binary was built with crash points.
const Enabled = false

// CommitBandwidth is the bandwidth in MiB/s live block commits start with: 0, no
// limit, in the shipped binary.
func CommitBandwidth() uint64 { return 0 }
