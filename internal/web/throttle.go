package web

import (
	"net"
	"sync"
	"time"
)

// Failed logins per client address: after maxLoginFailures within loginWindow, the
// address is refused (429 with Retry-After) until loginWindow has passed since its
// first failure, whatever it sends. bcrypt's cost alone still lets a script try a
// few passwords a second for ever.
const (
	maxLoginFailures = 5
	loginWindow      = time.Minute
	// maxTracked bounds the table: beyond it, expired entries are dropped first.
	maxTracked = 10000
)

type loginFailures struct {
	count int
	first time.Time
}

// loginThrottle counts failed logins per client address (the host part of
// RemoteAddr). Safe for concurrent use.
type loginThrottle struct {
	mu  sync.Mutex
	now func() time.Time
	by  map[string]*loginFailures
}

func newLoginThrottle(now func() time.Time) *loginThrottle {
	return &loginThrottle{now: now, by: map[string]*loginFailures{}}
}

func clientOf(remoteAddr string) string {
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return h
	}
	return remoteAddr
}

// blocked reports whether client may not try now, and for how long.
func (l *loginThrottle) blocked(client string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.by[client]
	if f == nil {
		return false, 0
	}
	left := f.first.Add(loginWindow).Sub(l.now())
	if left <= 0 {
		delete(l.by, client)
		return false, 0
	}
	return f.count >= maxLoginFailures, left
}

// failed records a failed login of client.
func (l *loginThrottle) failed(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	f := l.by[client]
	if f == nil || now.Sub(f.first) >= loginWindow {
		if len(l.by) >= maxTracked {
			for k, v := range l.by {
				if now.Sub(v.first) >= loginWindow {
					delete(l.by, k)
				}
			}
		}
		if len(l.by) >= maxTracked {
			return // a flood of addresses: bcrypt's cost is the bound left
		}
		f = &loginFailures{first: now}
		l.by[client] = f
	}
	f.count++
}

// succeeded forgets client's failures.
func (l *loginThrottle) succeeded(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.by, client)
}
