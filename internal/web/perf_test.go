package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestOverviewFast500 renders the overview, the guest API and the runs page for 500
// guests × 20 snapshots with 20 000 jobs of 50 guests each in the history; the
// overview must take under a second (the goal is far lower: see BenchmarkOverview).
func TestOverviewFast500(t *testing.T) {
	f := bigFleet(500, 20, 20000)
	h, err := New(f, Options{Addr: "127.0.0.1:8460", Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path  string
		limit time.Duration
		want  string
	}{
		{"/", time.Second, `data-guest="vm0499"`},
		{"/?host=host-3&tag=t1", time.Second, `data-guest="vm0013"`},
		{"/api/v1/guests", time.Second, `"name": "vm0499"`},
		{"/guests/host-4%2Fvm0499", time.Second, `data-name="auto19"`},
		{"/runs", time.Second, `id="job-20000"`},
		{"/charts?days=30", 2 * time.Second, `id="chart-freezes"`},
	} {
		// The first request warms the templates' reflection caches; measure the second.
		var took time.Duration
		var body string
		for range 2 {
			rec := httptest.NewRecorder()
			start := time.Now()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, c.path, nil))
			took = time.Since(start)
			b, _ := io.ReadAll(rec.Result().Body)
			body = string(b)
			if rec.Code != http.StatusOK {
				t.Fatalf("%s: %d %s", c.path, rec.Code, body)
			}
		}
		t.Logf("%s: %v, %d bytes", c.path, took, len(body))
		if limit := raceSlowdown * c.limit; took > limit {
			t.Errorf("%s took %v, want < %v", c.path, took, limit)
		}
		if !strings.Contains(body, c.want) {
			t.Errorf("%s lacks %s", c.path, c.want)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if n := strings.Count(rec.Body.String(), `<tr class="guest `); n != 500 {
		t.Errorf("overview shows %d guests, want 500", n)
	}
}

func BenchmarkOverview(b *testing.B) {
	f := bigFleet(500, 20, 2000)
	h, err := New(f, Options{Addr: "127.0.0.1:8460", Now: func() time.Time { return testNow }})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatal(rec.Code)
		}
	}
}
