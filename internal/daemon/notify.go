package daemon

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the request body,
// keyed with the webhook secret, when one is set.
const SignatureHeader = "X-Autosnap-Signature"

// Event is the JSON body of a webhook notification.
type Event struct {
	// Event is "failure" (a guest's first failed run after a success, or since the
	// daemon started) or "recovery" (its first successful run after failures).
	Event  string `json:"event"`
	Policy string `json:"policy"`
	Kind   string `json:"kind"`
	Host   string `json:"host"`
	Guest  string `json:"guest"`
	// Error is the failure's message (failure only).
	Error string `json:"error,omitempty"`
	// Failures is the number of consecutive failed runs: on recovery, how many
	// preceded it.
	Failures int       `json:"failures"`
	JobID    int64     `json:"job_id"`
	Time     time.Time `json:"time"`
	// Daemon identifies the sender (host name).
	Daemon string `json:"daemon,omitempty"`
}

// Sign returns the signature header value of body under secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// notifier posts events from a queue of its own, so a slow or dead webhook never
// holds up the scheduler: when the queue is full the event is dropped and logged.
type notifier struct {
	client     *http.Client
	log        *slog.Logger
	tries      uint
	maxElapsed time.Duration
	initial    time.Duration

	queue chan queued
	done  chan struct{}

	mu          sync.Mutex
	url, secret string
	closed      bool
	streaks     map[string]int // policy/kind/host/guest → consecutive failures
}

// queued is an event with the webhook it goes to, fixed when it was queued so that a
// reload does not redirect it.
type queued struct {
	e           Event
	url, secret string
}

func newNotifier(url, secret string, client *http.Client, log *slog.Logger) *notifier {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	n := &notifier{url: url, secret: secret, client: client, log: log, tries: 5,
		maxElapsed: 2 * time.Minute, initial: 500 * time.Millisecond,
		queue: make(chan queued, 256), done: make(chan struct{}), streaks: map[string]int{}}
	go n.loop()
	return n
}

// observe updates a guest's failure streak and queues an event on a failure that
// starts a streak or a success that ends one.
func (n *notifier) observe(e Event, failed bool) {
	k := e.Policy + "\x00" + e.Kind + "\x00" + e.Host + "\x00" + e.Guest
	n.mu.Lock()
	defer n.mu.Unlock()
	prev := n.streaks[k]
	if failed {
		n.streaks[k] = prev + 1
	} else {
		delete(n.streaks, k)
	}
	switch {
	case failed && prev == 0:
		e.Event, e.Failures = "failure", 1
	case !failed && prev > 0:
		e.Event, e.Failures, e.Error = "recovery", prev, ""
	default:
		return
	}
	if n.url == "" || n.closed {
		return
	}
	select {
	case n.queue <- queued{e: e, url: n.url, secret: n.secret}:
	default:
		n.log.Warn("webhook queue full: notification dropped", "event", e.Event, "policy", e.Policy, "guest", e.Guest)
	}
}

func (n *notifier) loop() {
	defer close(n.done)
	for q := range n.queue {
		e := q.e
		if err := n.post(q); err != nil {
			n.log.Error("webhook notification failed; giving up on it", "event", e.Event, "policy", e.Policy,
				"guest", e.Guest, "err", err)
		}
	}
}

// post sends one event, retrying transport errors and 5xx/429 answers with
// exponential backoff, at most n.tries times within n.maxElapsed.
func (n *notifier) post(q queued) error {
	body, err := json.Marshal(q.e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.maxElapsed)
	defer cancel()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = n.initial
	_, err = backoff.Retry(ctx, func() (struct{}, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, q.url, bytes.NewReader(body))
		if err != nil {
			return struct{}{}, backoff.Permanent(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "autosnap-daemon")
		if q.secret != "" {
			req.Header.Set(SignatureHeader, Sign(q.secret, body))
		}
		resp, err := n.client.Do(req)
		if err != nil {
			return struct{}{}, err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		switch {
		case resp.StatusCode < 300:
			return struct{}{}, nil
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			return struct{}{}, fmt.Errorf("webhook answered %s", resp.Status)
		default:
			return struct{}{}, backoff.Permanent(fmt.Errorf("webhook answered %s: check the URL and the secret", resp.Status))
		}
	}, backoff.WithBackOff(b), backoff.WithMaxTries(n.tries), backoff.WithMaxElapsedTime(n.maxElapsed))
	return err
}

// setTarget changes the webhook for events queued from now on.
func (n *notifier) setTarget(url, secret string) {
	n.mu.Lock()
	n.url, n.secret = url, secret
	n.mu.Unlock()
}

// close stops taking events and waits up to wait for the queued ones to be sent.
func (n *notifier) close(wait time.Duration) {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.queue)
	}
	n.mu.Unlock()
	select {
	case <-n.done:
	case <-time.After(wait):
		n.log.Warn("webhook notifications still pending at exit were not sent")
	}
}
