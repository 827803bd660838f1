package history

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors of the Store.
var (
	// ErrLocked is wrapped when another process holds the database for writing (a
	// running daemon) or keeps a transaction open past the timeout.
	ErrLocked = errors.New("the history database is in use by another autosnap process")
	// ErrNotFound is wrapped when a job id does not exist.
	ErrNotFound = errors.New("no such job in the history")
	// ErrNoDatabase is wrapped by a read-only Open of a file that does not exist.
	ErrNoDatabase = errors.New("no history database")
	// ErrReadOnly is returned by the writing methods of a read-only Store.
	ErrReadOnly = errors.New("the history database is open read-only")
)

// Options of Open.
type Options struct {
	// ReadOnly opens for queries only: no writer lock is taken, so a running daemon
	// does not lock the reader out.
	ReadOnly bool
	// Timeout bounds every wait for a lock: the writer lock at Open and the file lock
	// of each transaction. Default 5s.
	Timeout time.Duration
	// Now is the clock that stamps jobs marked aborted; default time.Now.
	Now func() time.Time
	// NoSync skips fsync after each write. Only for tests that fill large stores:
	// a crash may then lose or damage recent writes.
	NoSync bool
}

// Store is the run history in a bbolt (pure Go) file. It implements Recorder and
// Reader and is safe for concurrent use.
//
// bbolt locks its file for as long as it is open, so a daemon holding the database
// open would lock `autosnap history` and `monitor` out for its whole life. A Store
// therefore opens the file only for each transaction (a few hundred microseconds),
// and a writing Store holds a separate lock file, PATH.lock, from Open to Close so
// that only one process records at a time. Read-only Stores never take PATH.lock;
// while a write is in progress they wait for it, at most Options.Timeout.
//
// Layout: bucket "jobs" maps the job id (8 bytes big-endian, a sequence) to the job
// as JSON without its guests; "guests" maps job id + sequence to one GuestRun;
// "by_policy" and "by_guest" index policy/guest name + 0x00 + job id; "running"
// holds the ids of jobs not ended.
type Store struct {
	path string
	opts Options

	mu     sync.Mutex
	lock   *os.File // writer lock file; nil when read-only
	closed bool
}

var (
	bktJobs     = []byte("jobs")
	bktGuests   = []byte("guests")
	bktByPolicy = []byte("by_policy")
	bktByGuest  = []byte("by_guest")
	bktRunning  = []byte("running")
	allBuckets  = [][]byte{bktJobs, bktGuests, bktByPolicy, bktByGuest, bktRunning}
)

// sinceSlack is how far before Query.Since (or Prune's cutoff) a scan in job order
// continues: jobs are stored in the order they began, so their start times only
// decrease going back, unless the clock was set back; this tolerates clock steps
// back of up to a day.
const sinceSlack = 24 * time.Hour

// AbortedError is the error text of jobs and guests MarkAborted closes.
const AbortedError = "autosnap stopped before the job ended (killed or crashed)"

// Open opens (a writer creates) the history database at path: the file is created
// 0600 and its directory 0700. A writer waits at most Options.Timeout for another
// writer (a running daemon) and then fails with ErrLocked, and marks jobs a crashed
// writer left running as Aborted (MarkAborted). A read-only Open fails with
// ErrNoDatabase when the file does not exist.
func Open(path string, o Options) (*Store, error) {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Store{path: path, opts: o}
	if o.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w at %s (the daemon creates it when it first runs; pass --db for another file): %w", ErrNoDatabase, path, err)
			}
			return nil, fmt.Errorf("history database %s: %w", path, err)
		}
		return s, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("history database: create its directory: %w", err)
	}
	lf, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("history database: open its lock file: %w", err)
	}
	if err := flockWait(lf, o.Timeout); err != nil {
		lf.Close()
		return nil, fmt.Errorf("history database %s: %w (waited %s for %s.lock: is `autosnap daemon` running? stop it, or read with a read-only open: `autosnap history` does)", path, ErrLocked, o.Timeout, path)
	}
	s.lock = lf
	if err := s.update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		s.Close()
		return nil, err
	}
	if _, err := s.MarkAborted(context.Background()); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// flockWait takes an exclusive flock on f, retrying until timeout.
func flockWait(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close releases the writer lock. The Store is unusable afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.lock != nil {
		return s.lock.Close() // closing releases the flock
	}
	return nil
}

func (s *Store) db(readOnly bool) (*bolt.DB, error) {
	if s.closed {
		return nil, errors.New("history database: the store is closed")
	}
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: s.opts.Timeout, ReadOnly: readOnly, NoSync: s.opts.NoSync})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("history database %s: %w (a transaction held it longer than %s)", s.path, ErrLocked, s.opts.Timeout)
		}
		return nil, fmt.Errorf("history database %s: %w", s.path, err)
	}
	return db, nil
}

func (s *Store) update(fn func(*bolt.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return ErrReadOnly
	}
	db, err := s.db(false)
	if err != nil {
		return err
	}
	err = db.Update(fn)
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *Store) view(fn func(*bolt.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	db, err := s.db(s.lock == nil)
	if err != nil {
		return err
	}
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bktJobs) == nil {
			return nil // created by the first writer; nothing recorded yet
		}
		return fn(tx)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

func idKey(id int64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, uint64(id))
	return k
}

func indexKey(name string, id int64) []byte {
	k := make([]byte, 0, len(name)+9)
	k = append(k, name...)
	k = append(k, 0)
	return append(k, idKey(id)...)
}

func putJob(tx *bolt.Tx, j Job) error {
	j.Guests = nil
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.Bucket(bktJobs).Put(idKey(j.ID), b)
}

func getJob(tx *bolt.Tx, id int64) (Job, error) {
	v := tx.Bucket(bktJobs).Get(idKey(id))
	if v == nil {
		return Job{}, fmt.Errorf("job %d: %w", id, ErrNotFound)
	}
	var j Job
	if err := json.Unmarshal(v, &j); err != nil {
		return Job{}, fmt.Errorf("history job %d is unreadable: %w", id, err)
	}
	j.Guests = []GuestRun{}
	return j, nil
}

func putGuest(tx *bolt.Tx, id int64, g GuestRun) error {
	gb := tx.Bucket(bktGuests)
	seq, err := gb.NextSequence()
	if err != nil {
		return err
	}
	b, err := json.Marshal(g)
	if err != nil {
		return err
	}
	key := append(idKey(id), idKey(int64(seq))...)
	if err := gb.Put(key, b); err != nil {
		return err
	}
	// The index entry lists the keys of the guest's records in the job, so a query
	// by guest reads only those.
	ik := indexKey(g.Guest, id)
	ib := tx.Bucket(bktByGuest)
	return ib.Put(ik, append(append([]byte(nil), ib.Get(ik)...), key...))
}

// getGuestRecords reads the guest records whose keys (16 bytes each) keys lists.
func getGuestRecords(tx *bolt.Tx, id int64, keys []byte) ([]GuestRun, error) {
	out := []GuestRun{}
	gb := tx.Bucket(bktGuests)
	for ; len(keys) >= 16; keys = keys[16:] {
		v := gb.Get(keys[:16])
		if v == nil {
			continue
		}
		var g GuestRun
		if err := json.Unmarshal(v, &g); err != nil {
			return nil, fmt.Errorf("history job %d: a guest record is unreadable: %w", id, err)
		}
		normalizeGuest(&g)
		out = append(out, g)
	}
	return out, nil
}

// getGuests returns job id's guest runs in the order they were recorded, with the
// key of each.
func getGuests(tx *bolt.Tx, id int64) ([]GuestRun, [][]byte, error) {
	p := idKey(id)
	out := []GuestRun{}
	var keys [][]byte
	c := tx.Bucket(bktGuests).Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		var g GuestRun
		if err := json.Unmarshal(v, &g); err != nil {
			return nil, nil, fmt.Errorf("history job %d: a guest record is unreadable: %w", id, err)
		}
		normalizeGuest(&g)
		out = append(out, g)
		keys = append(keys, append([]byte(nil), k...))
	}
	return out, keys, nil
}

func normalizeGuest(g *GuestRun) {
	if g.Created == nil {
		g.Created = []string{}
	}
	if g.Removed == nil {
		g.Removed = []string{}
	}
}

// Begin stores a new job (Outcome Running when empty) and any guest runs it
// already carries, and returns its id.
func (s *Store) Begin(ctx context.Context, j Job) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if j.Outcome == "" {
		j.Outcome = Running
	}
	err := s.update(func(tx *bolt.Tx) error {
		seq, err := tx.Bucket(bktJobs).NextSequence()
		if err != nil {
			return err
		}
		j.ID = int64(seq)
		if err := putJob(tx, j); err != nil {
			return err
		}
		if err := tx.Bucket(bktByPolicy).Put(indexKey(j.Policy, j.ID), nil); err != nil {
			return err
		}
		for _, g := range j.Guests {
			if err := putGuest(tx, j.ID, g); err != nil {
				return err
			}
		}
		if j.Outcome == Running {
			return tx.Bucket(bktRunning).Put(idKey(j.ID), nil)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("record the start of a %s job of policy %q: %w", j.Kind, j.Policy, err)
	}
	return j.ID, nil
}

// Guest appends one guest's result to job id.
func (s *Store) Guest(ctx context.Context, id int64, g GuestRun) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bktJobs).Get(idKey(id)) == nil {
			return fmt.Errorf("job %d: %w", id, ErrNotFound)
		}
		return putGuest(tx, id, g)
	})
	if err != nil {
		return fmt.Errorf("record guest %s of job %d: %w", g.Guest, id, err)
	}
	return nil
}

// End closes job id with its outcome.
func (s *Store) End(ctx context.Context, id int64, outcome Outcome, errText string, ended time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.update(func(tx *bolt.Tx) error {
		j, err := getJob(tx, id)
		if err != nil {
			return err
		}
		j.Outcome, j.Error, j.Ended = outcome, errText, ended
		if err := putJob(tx, j); err != nil {
			return err
		}
		if outcome == Running {
			return nil
		}
		return tx.Bucket(bktRunning).Delete(idKey(id))
	})
	if err != nil {
		return fmt.Errorf("record the end of job %d: %w", id, err)
	}
	return nil
}

// MarkAborted closes every job still Running (and its guests still Running) as
// Aborted, ended now: only a writer that died leaves them, since one writer at a
// time holds the database. Open calls it; it returns how many jobs it closed.
func (s *Store) MarkAborted(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	now := s.opts.Now()
	err := s.update(func(tx *bolt.Tx) error {
		var ids []int64
		if err := tx.Bucket(bktRunning).ForEach(func(k, _ []byte) error {
			ids = append(ids, int64(binary.BigEndian.Uint64(k)))
			return nil
		}); err != nil {
			return err
		}
		for _, id := range ids {
			if err := tx.Bucket(bktRunning).Delete(idKey(id)); err != nil {
				return err
			}
			j, err := getJob(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			j.Outcome, j.Ended = Aborted, now
			if j.Error == "" {
				j.Error = AbortedError
			}
			if err := putJob(tx, j); err != nil {
				return err
			}
			gs, keys, err := getGuests(tx, id)
			if err != nil {
				return err
			}
			for i, g := range gs {
				if g.Outcome != Running && g.Outcome != "" {
					continue
				}
				g.Outcome, g.Ended = Aborted, now
				if g.Error == "" {
					g.Error = AbortedError
				}
				b, err := json.Marshal(g)
				if err != nil {
					return err
				}
				if err := tx.Bucket(bktGuests).Put(keys[i], b); err != nil {
					return err
				}
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("mark jobs left running as aborted: %w", err)
	}
	return n, nil
}

// Prune removes the jobs (with their guests) that started before olderThan and are
// not running, and returns how many it removed.
func (s *Store) Prune(ctx context.Context, olderThan time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		var doomed []Job
		c := tx.Bucket(bktJobs).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("history job %d is unreadable: %w", int64(binary.BigEndian.Uint64(k)), err)
			}
			if j.Started.After(olderThan.Add(sinceSlack)) {
				break
			}
			if j.Started.Before(olderThan) && j.Outcome != Running {
				doomed = append(doomed, j)
			}
		}
		for _, j := range doomed {
			gs, keys, err := getGuests(tx, j.ID)
			if err != nil {
				return err
			}
			for i, g := range gs {
				if err := tx.Bucket(bktGuests).Delete(keys[i]); err != nil {
					return err
				}
				if err := tx.Bucket(bktByGuest).Delete(indexKey(g.Guest, j.ID)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bktByPolicy).Delete(indexKey(j.Policy, j.ID)); err != nil {
				return err
			}
			if err := tx.Bucket(bktJobs).Delete(idKey(j.ID)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune the history: %w", err)
	}
	return n, nil
}

// Job returns job id with all its guests.
func (s *Store) Job(ctx context.Context, id int64) (Job, error) {
	if err := ctx.Err(); err != nil {
		return Job{}, err
	}
	var j Job
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		if j, err = getJob(tx, id); err != nil {
			return err
		}
		j.Guests, _, err = getGuests(tx, id)
		return err
	})
	if err == nil && j.ID == 0 {
		err = fmt.Errorf("job %d: %w", id, ErrNotFound)
	}
	return j, err
}

// Jobs returns the jobs q selects, newest (last begun) first. Jobs are kept in the
// order they began; a scan with Since stops a day (sinceSlack) before Since, so a
// job whose start time lies before that of a job begun earlier by more than a day
// (the clock was set back) may be missed.
func (s *Store) Jobs(ctx context.Context, q Query) ([]Job, error) {
	out := []Job{}
	err := s.scan(ctx, q, func(j Job) bool {
		out = append(out, j)
		return q.Limit <= 0 || len(out) < q.Limit
	})
	return out, err
}

// scan calls fn with each job q selects (ignoring q.Limit), newest first, until fn
// returns false.
func (s *Store) scan(ctx context.Context, q Query, fn func(Job) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.view(func(tx *bolt.Tx) error {
		var c *bolt.Cursor
		var prefix []byte
		switch {
		case q.Guest != "":
			c, prefix = tx.Bucket(bktByGuest).Cursor(), append([]byte(q.Guest), 0)
		case q.Policy != "":
			c, prefix = tx.Bucket(bktByPolicy).Cursor(), append([]byte(q.Policy), 0)
		default:
			c = tx.Bucket(bktJobs).Cursor()
		}
		var k, v []byte
		if prefix == nil {
			k, v = c.Last()
		} else {
			end := append(append([]byte(nil), prefix...), bytes.Repeat([]byte{0xff}, 9)...)
			if k, v = c.Seek(end); k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		for ; k != nil; k, v = c.Prev() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !bytes.HasPrefix(k, prefix) {
				break // below the index range
			}
			if len(k) != len(prefix)+8 {
				continue
			}
			id := int64(binary.BigEndian.Uint64(k[len(prefix):]))
			j, err := getJob(tx, id)
			if err != nil {
				return err
			}
			if !q.Since.IsZero() && j.Started.Before(q.Since) {
				if j.Started.Before(q.Since.Add(-sinceSlack)) {
					break
				}
				continue
			}
			if (q.Policy != "" && j.Policy != q.Policy) || (q.Kind != "" && j.Kind != q.Kind) ||
				(q.Outcome != "" && j.Outcome != q.Outcome) {
				continue
			}
			var gs []GuestRun
			if q.Guest != "" && len(v) > 0 {
				gs, err = getGuestRecords(tx, id, v)
			} else {
				gs, _, err = getGuests(tx, id)
			}
			if err != nil {
				return err
			}
			if q.Guest != "" || q.GuestMatch != nil {
				kept := []GuestRun{}
				for _, g := range gs {
					if (q.Guest == "" || g.Guest == q.Guest) && (q.GuestMatch == nil || q.GuestMatch(g.Host, g.Guest)) {
						kept = append(kept, g)
					}
				}
				if len(kept) == 0 {
					continue
				}
				gs = kept
			}
			j.Guests = gs
			if !fn(j) {
				break
			}
		}
		return nil
	})
}

// Last returns the newest job q selects (q.Limit is ignored) that is not running
// and not a dry run.
func (s *Store) Last(ctx context.Context, q Query) (Job, bool, error) {
	var found Job
	ok := false
	err := s.scan(ctx, q, func(j Job) bool {
		if j.Outcome == Running || j.DryRun {
			return true
		}
		found, ok = j, true
		return false
	})
	return found, ok && err == nil, err
}

// LastRun returns the newest finished (not running), non-dry-run job of policy and
// kind (any kind when empty), whatever its outcome; false when there is none or
// the database cannot be read (Last reports the error).
func (s *Store) LastRun(policy string, kind Kind) (Job, bool) {
	j, ok, _ := s.Last(context.Background(), Query{Policy: policy, Kind: kind})
	return j, ok
}

// LastGuest returns the newest finished (not running) run of guest (by name) in a
// non-dry-run job of kind (any kind when empty); false when there is none or the
// database cannot be read (LastGuestRun reports the error).
func (s *Store) LastGuest(guest string, kind Kind) (GuestRun, bool) {
	g, _, ok, _ := s.LastGuestRun(context.Background(), Query{Guest: guest, Kind: kind})
	return g, ok
}

// LastGuestRun returns the newest finished (not running) run of guest q.Guest in
// a non-dry-run job q selects (q.Limit is ignored), the job it belongs to (without
// its guests), and whether there is one.
func (s *Store) LastGuestRun(ctx context.Context, q Query) (GuestRun, Job, bool, error) {
	if q.Guest == "" {
		return GuestRun{}, Job{}, false, errors.New("history: LastGuestRun needs a guest")
	}
	var gr GuestRun
	var job Job
	ok := false
	err := s.scan(ctx, q, func(j Job) bool {
		if j.DryRun {
			return true
		}
		for i := len(j.Guests) - 1; i >= 0; i-- {
			if o := j.Guests[i].Outcome; o != Running && o != "" {
				gr, job, ok = j.Guests[i], j, true
				job.Guests = nil
				return false
			}
		}
		return true
	})
	return gr, job, ok && err == nil, err
}

var (
	_ Recorder = (*Store)(nil)
	_ Reader   = (*Store)(nil)
)

// FileName is the database's name in the policy file's state_dir.
const FileName = "history.db"

// PathIn is the history database of state directory dir (policy.Config.StateDir).
func PathIn(dir string) string { return filepath.Join(dir, FileName) }
