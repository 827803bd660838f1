package retention

import (
	"fmt"
	"math/rand"
	"testing"
	"time"
)

// TestPeriodKeys: the hand-built period keys are what time.Format renders.
func TestPeriodKeys(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		tm := time.Unix(rng.Int63n(8e9), 0).UTC()
		y, w := tm.ISOWeek()
		for _, c := range [][2]string{
			{hourKey(tm), tm.Format("2006-01-02 15h")},
			{dayKey(tm), tm.Format("2006-01-02")},
			{weekKey(tm), fmt.Sprintf("%04d-W%02d", y, w)},
			{monthKey(tm), tm.Format("2006-01")},
			{yearKey(tm), tm.Format("2006")},
		} {
			if c[0] != c[1] {
				t.Fatalf("%s: key %q, want %q", tm, c[0], c[1])
			}
		}
	}
}
