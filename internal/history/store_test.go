package history

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)

func openStore(t testing.TB, path string, o Options) *Store {
	t.Helper()
	s, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// norm makes a job comparable after a round trip: times in UTC without monotonic
// readings, nil slices empty.
func norm(j Job) Job {
	j.Started, j.Ended = j.Started.UTC(), j.Ended.UTC()
	gs := make([]GuestRun, len(j.Guests))
	for i, g := range j.Guests {
		g.Started, g.Ended = g.Started.UTC(), g.Ended.UTC()
		normalizeGuest(&g)
		gs[i] = g
	}
	j.Guests = gs
	return j
}

func randString(r *rand.Rand) string {
	alphabet := []rune("abcxyz-_.%é日本 \"\\\n\x00")
	n := r.Intn(12)
	var b strings.Builder
	for range n {
		b.WriteRune(alphabet[r.Intn(len(alphabet))])
	}
	return b.String()
}

func randTime(r *rand.Rand) time.Time {
	if r.Intn(5) == 0 {
		return time.Time{}
	}
	zones := []*time.Location{time.UTC, time.FixedZone("X", 3600*5+1800), time.FixedZone("Y", -7*3600)}
	return t0.Add(time.Duration(r.Int63n(int64(400*24*time.Hour))) - 200*24*time.Hour).In(zones[r.Intn(len(zones))])
}

func randStrings(r *rand.Rand) []string {
	if r.Intn(3) == 0 {
		return nil
	}
	s := make([]string, r.Intn(4))
	for i := range s {
		s[i] = randString(r)
	}
	return s
}

func randGuest(r *rand.Rand) GuestRun {
	outs := []Outcome{OK, Failed, Skipped, Aborted}
	return GuestRun{Host: randString(r), Guest: "g" + randString(r), Started: randTime(r), Ended: randTime(r),
		Outcome: outs[r.Intn(len(outs))], Error: randString(r), Created: randStrings(r), Removed: randStrings(r),
		Bytes: r.Int63(), Freeze: time.Duration(r.Int63())}
}

// Whatever is recorded (Begin with guests, Guest, End) reads back identical through
// Job and through Jobs.
func TestStoreRoundTripProperty(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "h.db"), Options{NoSync: true})
	ctx := context.Background()
	r := rand.New(rand.NewSource(1))
	kinds := []Kind{KindSnapshot, KindBackup, KindPrune, KindVerify}
	var want []Job
	for range 200 {
		j := Job{Policy: "p" + randString(r), Kind: kinds[r.Intn(len(kinds))], Trigger: randString(r),
			DryRun: r.Intn(2) == 0, Started: randTime(r)}
		for range r.Intn(3) {
			j.Guests = append(j.Guests, randGuest(r))
		}
		id, err := s.Begin(ctx, j)
		if err != nil {
			t.Fatal(err)
		}
		j.ID, j.Outcome = id, Running
		for range r.Intn(5) {
			g := randGuest(r)
			if err := s.Guest(ctx, id, g); err != nil {
				t.Fatal(err)
			}
			j.Guests = append(j.Guests, g)
		}
		if r.Intn(4) != 0 {
			j.Outcome, j.Error, j.Ended = []Outcome{OK, Failed, Aborted}[r.Intn(3)], randString(r), randTime(r)
			if err := s.End(ctx, id, j.Outcome, j.Error, j.Ended); err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, norm(j))
	}
	for _, w := range want {
		got, err := s.Job(ctx, w.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(norm(got), w) {
			t.Fatalf("job %d read back differs:\n got %#v\nwant %#v", w.ID, norm(got), w)
		}
	}
	all, err := s.Jobs(ctx, Query{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(want) {
		t.Fatalf("Jobs returned %d jobs, want %d", len(all), len(want))
	}
	for i, got := range all {
		w := want[len(want)-1-i]
		if !reflect.DeepEqual(norm(got), w) {
			t.Fatalf("Jobs[%d] differs:\n got %#v\nwant %#v", i, norm(got), w)
		}
	}
	if _, err := s.Job(ctx, 9999); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Job(9999) = %v, want ErrNotFound", err)
	}
	if err := s.Guest(ctx, 9999, GuestRun{Guest: "x"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Guest on a missing job = %v, want ErrNotFound", err)
	}
}

func record(t testing.TB, s *Store, policy string, kind Kind, start time.Time, out Outcome, guests ...string) int64 {
	t.Helper()
	ctx := context.Background()
	id, err := s.Begin(ctx, Job{Policy: policy, Kind: kind, Trigger: "schedule", Started: start})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range guests {
		if err := s.Guest(ctx, id, GuestRun{Host: "h", Guest: g, Started: start, Ended: start.Add(time.Second), Outcome: out}); err != nil {
			t.Fatal(err)
		}
	}
	if out != Running {
		if err := s.End(ctx, id, out, "", start.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

func ids(js []Job) []int64 {
	out := []int64{}
	for _, j := range js {
		out = append(out, j.ID)
	}
	return out
}

func TestStoreQuery(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "h.db"), Options{})
	ctx := context.Background()
	a1 := record(t, s, "web", KindSnapshot, t0, OK, "web1", "web2")
	b1 := record(t, s, "db", KindBackup, t0.Add(time.Hour), Failed, "db1")
	a2 := record(t, s, "web", KindSnapshot, t0.Add(2*time.Hour), Failed, "web1")
	a3 := record(t, s, "web", KindPrune, t0.Add(3*time.Hour), OK, "web2")
	// "web" is a prefix of "web1" and "webx": the indexes must not mix them.
	w4 := record(t, s, "webx", KindSnapshot, t0.Add(4*time.Hour), OK, "web")
	cases := []struct {
		name string
		q    Query
		want []int64
	}{
		{"all", Query{}, []int64{w4, a3, a2, b1, a1}},
		{"policy", Query{Policy: "web"}, []int64{a3, a2, a1}},
		{"policy prefix", Query{Policy: "webx"}, []int64{w4}},
		{"guest", Query{Guest: "web1"}, []int64{a2, a1}},
		{"guest prefix", Query{Guest: "web"}, []int64{w4}},
		{"guest+policy", Query{Guest: "web2", Policy: "web"}, []int64{a3, a1}},
		{"kind", Query{Policy: "web", Kind: KindSnapshot}, []int64{a2, a1}},
		{"outcome", Query{Outcome: Failed}, []int64{a2, b1}},
		{"since", Query{Since: t0.Add(90 * time.Minute)}, []int64{w4, a3, a2}},
		{"limit", Query{Limit: 2}, []int64{w4, a3}},
		{"match", Query{GuestMatch: func(_, g string) bool { return strings.HasPrefix(g, "db") }}, []int64{b1}},
		{"none", Query{Guest: "nope"}, []int64{}},
	}
	for _, c := range cases {
		got, err := s.Jobs(ctx, c.q)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ids(got), c.want) {
			t.Errorf("%s: got jobs %v, want %v", c.name, ids(got), c.want)
		}
	}
	// A guest filter narrows the job's guests to the matching ones.
	got, _ := s.Jobs(ctx, Query{Guest: "web2", Policy: "web", Limit: 1})
	if len(got) != 1 || len(got[0].Guests) != 1 || got[0].Guests[0].Guest != "web2" {
		t.Fatalf("guest filter: got %+v", got)
	}
	got, _ = s.Jobs(ctx, Query{Policy: "web", Limit: 1, Kind: KindSnapshot})
	if len(got) != 1 || got[0].ID != a2 {
		t.Fatalf("kind+limit: got %v", ids(got))
	}
	got, _ = s.Jobs(ctx, Query{})
	if len(got[len(got)-1].Guests) != 2 {
		t.Fatalf("unfiltered job keeps both guests, got %+v", got[len(got)-1].Guests)
	}
}

func TestStoreLastRunAndLastGuest(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "h.db"), Options{})
	ctx := context.Background()
	if _, ok := s.LastRun("web", KindSnapshot); ok {
		t.Fatal("LastRun on an empty store found a job")
	}
	ok1 := record(t, s, "web", KindSnapshot, t0, OK, "web1")
	fail := record(t, s, "web", KindSnapshot, t0.Add(time.Hour), Failed, "web1")
	record(t, s, "web", KindBackup, t0.Add(2*time.Hour), OK, "web1")
	dry, _ := s.Begin(ctx, Job{Policy: "web", Kind: KindSnapshot, DryRun: true, Started: t0.Add(3 * time.Hour)})
	s.Guest(ctx, dry, GuestRun{Guest: "web1", Outcome: OK})
	s.End(ctx, dry, OK, "", t0.Add(3*time.Hour))
	running := record(t, s, "web", KindSnapshot, t0.Add(4*time.Hour), Running, "web1")
	_ = running

	j, ok := s.LastRun("web", KindSnapshot)
	if !ok || j.ID != fail {
		t.Fatalf("LastRun(web, snapshot) = %d %v, want the failed job %d (running and dry-run jobs do not count)", j.ID, ok, fail)
	}
	if j, _ := s.LastRun("web", ""); j.Kind != KindBackup {
		t.Fatalf("LastRun(web, any) = %+v, want the backup", j)
	}
	g, ok := s.LastGuest("web1", KindSnapshot)
	if !ok || g.Outcome != Failed {
		t.Fatalf("LastGuest(web1, snapshot) = %+v %v, want the failed run", g, ok)
	}
	_, job, _, err := s.LastGuestRun(ctx, Query{Guest: "web1", Kind: KindSnapshot})
	if err != nil || job.ID != fail {
		t.Fatalf("LastGuestRun job = %d %v, want %d", job.ID, err, fail)
	}
	_ = ok1
}

// A writer holds PATH.lock: a second writer fails after its timeout with ErrLocked,
// a reader reads meanwhile; the file is 0600 in a 0700 directory.
func TestStoreLocking(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "history.db")
	if _, err := Open(path, Options{ReadOnly: true}); !errors.Is(err, ErrNoDatabase) {
		t.Fatalf("read-only open of a missing file = %v, want ErrNoDatabase", err)
	}
	w := openStore(t, path, Options{})
	id := record(t, w, "web", KindSnapshot, t0, OK, "web1")
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600, path + ".lock": 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	start := time.Now()
	if _, err := Open(path, Options{Timeout: 300 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer: %v, want ErrLocked", err)
	} else if !strings.Contains(err.Error(), "daemon") {
		t.Fatalf("second writer's error does not say what to do: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("second writer gave up after %s, want about 300ms", d)
	}
	r := openStore(t, path, Options{ReadOnly: true, Timeout: time.Second})
	js, err := r.Jobs(context.Background(), Query{})
	if err != nil || len(js) != 1 || js[0].ID != id {
		t.Fatalf("reader while the writer is open: %v %v", ids(js), err)
	}
	if _, err := r.Begin(context.Background(), Job{Policy: "x"}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Begin on a reader = %v, want ErrReadOnly", err)
	}
	// The writer keeps writing while a reader exists.
	record(t, w, "web", KindSnapshot, t0.Add(time.Hour), OK, "web1")
	if js, _ := r.Jobs(context.Background(), Query{}); len(js) != 2 {
		t.Fatalf("reader sees %d jobs, want 2", len(js))
	}
	w.Close()
	w2 := openStore(t, path, Options{Timeout: time.Second})
	if js, _ := w2.Jobs(context.Background(), Query{}); len(js) != 2 {
		t.Fatalf("reopened writer sees %d jobs", len(js))
	}
}

func TestStorePrune(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "h.db"), Options{})
	ctx := context.Background()
	old := record(t, s, "web", KindSnapshot, t0, OK, "web1", "web2")
	oldRunning := record(t, s, "web", KindSnapshot, t0.Add(time.Minute), Running, "web1")
	recent := record(t, s, "web", KindSnapshot, t0.Add(48*time.Hour), OK, "web1")
	n, err := s.Prune(ctx, t0.Add(24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1", n, err)
	}
	for _, q := range []Query{{}, {Guest: "web1"}, {Guest: "web2"}, {Policy: "web"}} {
		js, err := s.Jobs(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ids(js), []int64{recent, oldRunning}) && !(q.Guest == "web2" && len(js) == 0) {
			t.Fatalf("after Prune, %+v returns %v", q, ids(js))
		}
	}
	if _, err := s.Job(ctx, old); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pruned job still readable: %v", err)
	}
	err = s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktGuests).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if strings.HasPrefix(string(k), string(idKey(old))) {
				return fmt.Errorf("guest record %x of the pruned job is left", k)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The child of TestStoreCrashSafety: records jobs forever, printing each id once
// its Begin is stored; the parent kills it.
func TestMain(m *testing.M) {
	if path := os.Getenv("AUTOSNAP_HISTORY_CRASH_CHILD"); path != "" {
		s, err := Open(path, Options{Timeout: 10 * time.Second})
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		ctx := context.Background()
		for i := 0; ; i++ {
			id, err := s.Begin(ctx, Job{Policy: "crash", Kind: KindSnapshot, Started: time.Now()})
			if err != nil {
				fmt.Println("ERR", err)
				os.Exit(1)
			}
			fmt.Println("BEGUN", id)
			for g := range 20 {
				s.Guest(ctx, id, GuestRun{Guest: "g" + strconv.Itoa(g), Outcome: OK, Created: []string{strings.Repeat("x", 500)}})
			}
			s.End(ctx, id, OK, "", time.Now())
		}
	}
	os.Exit(m.Run())
}

// A writer killed (SIGKILL) in the middle of writing leaves a database that opens
// cleanly, passes bbolt's consistency check, keeps every job begun, and has the
// job that was running marked Aborted.
func TestStoreCrashSafety(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.db")
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "AUTOSNAP_HISTORY_CRASH_CHILD="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var last int64
		for n := 0; n < 5+round*3 && sc.Scan(); {
			line := sc.Text()
			if strings.HasPrefix(line, "ERR") {
				t.Fatal(line)
			}
			if v, ok := strings.CutPrefix(line, "BEGUN "); ok {
				last, _ = strconv.ParseInt(v, 10, 64)
				n++
			}
		}
		// Land the kill at a random point inside the next job's writes.
		time.Sleep(time.Duration(rand.Intn(30)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
		if err != nil {
			t.Fatalf("round %d: the database does not open after the kill: %v", round, err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				return err
			}
			return nil
		})
		db.Close()
		if err != nil {
			t.Fatalf("round %d: bbolt check after the kill: %v", round, err)
		}
		s, err := Open(path, Options{Timeout: 2 * time.Second})
		if err != nil {
			t.Fatalf("round %d: reopen after the kill: %v", round, err)
		}
		js, err := s.Jobs(context.Background(), Query{})
		if err != nil {
			t.Fatal(err)
		}
		if len(js) == 0 || js[0].ID < last {
			t.Fatalf("round %d: newest job %v, but job %d was reported begun", round, ids(js), last)
		}
		for _, j := range js {
			if j.Outcome == Running {
				t.Fatalf("round %d: job %d still running after reopen", round, j.ID)
			}
			for _, g := range j.Guests {
				if g.Outcome == Running {
					t.Fatalf("round %d: job %d guest %s still running after reopen", round, j.ID, g.Guest)
				}
			}
		}
		if js[0].Outcome != Aborted && js[0].Outcome != OK {
			t.Fatalf("round %d: newest job outcome %s", round, js[0].Outcome)
		}
		s.Close()
	}
}

// fill records jobs × guestsPer guest runs in one transaction per job (no fsync).
func fill(b testing.TB, s *Store, jobs, guestsPer, policies, guests int) {
	ctx := context.Background()
	for i := range jobs {
		start := t0.Add(time.Duration(i) * time.Minute)
		j := Job{Policy: "p" + strconv.Itoa(i%policies), Kind: KindSnapshot, Trigger: "schedule", Started: start,
			Ended: start.Add(30 * time.Second), Outcome: OK}
		for g := range guestsPer {
			j.Guests = append(j.Guests, GuestRun{Host: "h", Guest: "guest" + strconv.Itoa((i*guestsPer+g)%guests),
				Started: start, Ended: start.Add(time.Second), Outcome: OK, Created: []string{"autoweb20261130080000"}})
		}
		if _, err := s.Begin(ctx, j); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreQuery: 100k guest runs over 500 guests, recorded as 2000 jobs of 50
// guests (20 policies) or as 200 jobs of all 500 guests (1 policy, the daemon's
// shape for one big policy); each query is an indexed lookup.
func BenchmarkStoreQuery(b *testing.B) {
	for _, shape := range []struct {
		name                      string
		jobs, per, policies, step int
	}{{"2000x50", 2000, 50, 20, 1}, {"200x500", 200, 500, 1, 10}} {
		s := openStore(b, filepath.Join(b.TempDir(), "h.db"), Options{NoSync: true})
		fill(b, s, shape.jobs, shape.per, shape.policies, 500)
		benchQueries(b, s, shape.name, shape.jobs)
	}
}

func benchQueries(b *testing.B, s *Store, shape string, jobs int) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		q    Query
	}{
		{"guest-20", Query{Guest: "guest123", Limit: 20}},
		{"policy-20", Query{Policy: "p0", Limit: 20}},
		{"since-10min", Query{Since: t0.Add(time.Duration(jobs-10) * time.Minute)}},
		{"last-guest-run", Query{Guest: "guest7", Kind: KindSnapshot, Limit: 1}},
	} {
		q := c.q
		b.Run(shape+"/"+c.name, func(b *testing.B) {
			for b.Loop() {
				js, err := s.Jobs(ctx, q)
				if err != nil || len(js) == 0 {
					b.Fatal(len(js), err)
				}
			}
		})
	}
}

// Recorder methods are safe for concurrent use: jobs recorded from many goroutines
// all read back whole.
func TestStoreConcurrentRecording(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "h.db"), Options{NoSync: true})
	r := openStore(t, s.Path(), Options{ReadOnly: true})
	ctx := context.Background()
	const workers, jobs, guests = 8, 10, 5
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range jobs {
				id, err := s.Begin(ctx, Job{Policy: "p" + strconv.Itoa(w), Kind: KindSnapshot, Started: t0.Add(time.Duration(i) * time.Minute)})
				if err != nil {
					errs <- err
					return
				}
				for g := range guests {
					if err := s.Guest(ctx, id, GuestRun{Guest: fmt.Sprintf("g%d-%d", w, g), Outcome: OK}); err != nil {
						errs <- err
						return
					}
				}
				if err := s.End(ctx, id, OK, "", t0); err != nil {
					errs <- err
					return
				}
				if _, err := r.Jobs(ctx, Query{Policy: "p" + strconv.Itoa(w), Limit: 1}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	js, err := s.Jobs(ctx, Query{})
	if err != nil {
		t.Fatal(err)
	}
	if len(js) != workers*jobs {
		t.Fatalf("%d jobs recorded, want %d", len(js), workers*jobs)
	}
	for _, j := range js {
		if len(j.Guests) != guests || j.Outcome != OK {
			t.Fatalf("job %d: %d guests, outcome %s", j.ID, len(j.Guests), j.Outcome)
		}
	}
}

// BenchmarkStoreRecordGuest is the cost of recording one guest's result, durable
// (fsync), as the daemon does.
func BenchmarkStoreRecordGuest(b *testing.B) {
	s := openStore(b, filepath.Join(b.TempDir(), "h.db"), Options{})
	ctx := context.Background()
	id, err := s.Begin(ctx, Job{Policy: "p", Kind: KindSnapshot, Started: t0})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := s.Guest(ctx, id, GuestRun{Guest: "guest1", Outcome: OK, Created: []string{"autoweb261130080000"}}); err != nil {
			b.Fatal(err)
		}
	}
}
