//go:build !crashtest

package crash

// Point marks a crash point; it does nothing in the shipped binary.
func Point(string) {}

// Enabled reports whether this binary was built with crash points.
const Enabled = false
