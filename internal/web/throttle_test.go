package web

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestLoginThrottleWindow(t *testing.T) {
	now := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	l := newLoginThrottle(func() time.Time { return now })
	for i := range maxLoginFailures {
		if no, _ := l.blocked("192.0.2.1"); no {
			t.Fatalf("blocked after %d failures", i)
		}
		l.failed("192.0.2.1")
	}
	no, wait := l.blocked("192.0.2.1")
	if !no || wait != loginWindow {
		t.Fatalf("after %d failures: blocked %v for %v, want %v", maxLoginFailures, no, wait, loginWindow)
	}
	if no, _ := l.blocked("192.0.2.2"); no {
		t.Error("another address is blocked too")
	}
	now = now.Add(loginWindow - time.Second)
	if no, _ := l.blocked("192.0.2.1"); !no {
		t.Error("unblocked before the window ended")
	}
	now = now.Add(time.Second)
	if no, _ := l.blocked("192.0.2.1"); no {
		t.Error("still blocked when the window ended")
	}
	l.failed("192.0.2.3")
	l.succeeded("192.0.2.3")
	if len(l.by) != 0 {
		t.Errorf("entries left: %v", l.by)
	}
}

// TestLoginThrottled: the sixth login attempt from one address within the window is
// refused with 429 and Retry-After even with the right password.
func TestLoginThrottled(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw-ann"), bcrypt.MinCost)
	srv := serveTLS(t, smallFleet(), Options{Users: map[string]string{"ann": string(hash)}})
	c := client(t, srv)
	_, page := get(t, c, srv.URL+"/login")
	tok := csrfOf(t, page)
	for i := range maxLoginFailures {
		if resp, _ := post(t, c, srv.URL+"/login", "application/x-www-form-urlencoded", "user=ann&password=wrong&csrf="+tok); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failed login %d: %d", i+1, resp.StatusCode)
		}
	}
	resp, body := post(t, c, srv.URL+"/login", "application/x-www-form-urlencoded", "user=ann&password=pw-ann&csrf="+tok)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "too many failed logins") {
		t.Fatalf("login after %d failures: %d Retry-After %q %s", maxLoginFailures, resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}
