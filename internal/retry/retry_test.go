package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDelayGrowsWithinJitterUpToMax(t *testing.T) {
	b := Backoff{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Factor: 2, Jitter: 0.2}
	for n := 0; n < 40; n++ {
		base := min(10*time.Millisecond<<min(n, 20), 200*time.Millisecond)
		for range 50 {
			d := b.Delay(n)
			if d < time.Duration(float64(base)*0.8) || d > time.Duration(float64(base)*1.2) {
				t.Fatalf("Delay(%d) = %v, want %v ± 20%%", n, d, base)
			}
		}
	}
	exact := Backoff{Initial: time.Millisecond, Max: time.Second, Factor: 3}
	if got := exact.Delay(2); got != 9*time.Millisecond {
		t.Errorf("without jitter Delay(2) = %v, want 9ms", got)
	}
}

func TestDoStopsOnSuccess(t *testing.T) {
	calls := 0
	err := Do(context.Background(), Default, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("Do = %v after %d calls, want nil after 3", err, calls)
	}
}

func TestDoStopsOnPermanent(t *testing.T) {
	boom := errors.New("boom")
	calls := 0
	err := Do(context.Background(), Default, func() error { calls++; return Permanent(boom) })
	if err != boom || calls != 1 {
		t.Errorf("Do = %v after %d calls, want boom after 1", err, calls)
	}
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
}

func TestDoEndsWithContextReturningLastError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	calls := 0
	last := errors.New("still busy")
	err := Do(ctx, Default, func() error { calls++; return last })
	took := time.Since(start)
	if err != last {
		t.Errorf("Do = %v, want the last error", err)
	}
	if took < 300*time.Millisecond || took > 900*time.Millisecond {
		t.Errorf("Do took %v for a 300ms context", took)
	}
	// 25, 50, 100, 200 ms: about 4-5 attempts in 300 ms, not a busy loop.
	if calls < 3 || calls > 8 {
		t.Errorf("%d attempts in 300ms", calls)
	}
}

func TestDoTriesOnceWithDoneContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	if err := Do(ctx, Default, func() error { calls++; return nil }); err != nil || calls != 1 {
		t.Errorf("Do = %v after %d calls", err, calls)
	}
}
