package daemon

import "time"

// Clock is the daemon's view of time. Tests drive a fake one; After must return a
// channel that receives once Now has advanced by d (or sooner: the daemon re-reads Now
// after every wake-up, so an early or spurious wake-up is harmless).
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the wall clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
