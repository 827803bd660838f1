// Package journal keeps small, durable records of destructive work in progress, so that
// a run cut off at any point (SIGKILL, power loss, a timeout) can be finished or undone
// by the next one. A record is written before an irreversible step and removed when the
// work is complete; its mere presence means "something was left half done".
//
// Records are JSON files, one per key, written to a temporary file, fsynced and renamed
// (then the directory is fsynced), so a reader sees the old record or the new one,
// never a torn one. Files are 0600 and directories 0700. The package knows nothing of
// what the records mean: each user defines its own record type and key space.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// EnvDir names the environment variable that overrides DefaultDir.
const EnvDir = "AUTOSNAP_STATE_DIR"

// DefaultDir is where journals live: $AUTOSNAP_STATE_DIR/journal when set, else
// /var/lib/autosnap/journal for root and $XDG_STATE_HOME/autosnap/journal (or
// ~/.local/state/autosnap/journal) for other users.
func DefaultDir() string {
	if d := os.Getenv(EnvDir); d != "" {
		return filepath.Join(d, "journal")
	}
	if os.Geteuid() == 0 {
		return "/var/lib/autosnap/journal"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "autosnap", "journal")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "autosnap", "journal")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("autosnap-%d", os.Getuid()), "journal")
}

// Store is a directory of records.
type Store struct {
	Dir string
}

// Open returns the store in dir ("" means DefaultDir()). The directory is created on
// the first Put.
func Open(dir string) *Store {
	if dir == "" {
		dir = DefaultDir()
	}
	return &Store{Dir: dir}
}

// fileName maps a key (any string, e.g. "merge/host/uuid") to one flat file name.
func (s *Store) fileName(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return filepath.Join(s.Dir, b.String()+".json")
}

// Path returns the file that holds (or would hold) the record of key, for messages
// that tell a user what to inspect or remove.
func (s *Store) Path(key string) string { return s.fileName(key) }

// Put durably replaces the record of key with v (marshalled as JSON).
func (s *Store) Put(key string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("journal %s: %w", key, err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("journal: creating %s: %w", s.Dir, err)
	}
	name := s.fileName(key)
	tmp, err := os.CreateTemp(s.Dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("journal %s: %w", key, err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("journal %s: writing %s: %w", key, tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("journal %s: syncing %s: %w", key, tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("journal %s: %w", key, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("journal %s: %w", key, err)
	}
	return syncDir(s.Dir)
}

// Get reads the record of key into v; ok is false when there is none.
func (s *Store) Get(key string, v any) (ok bool, err error) {
	data, err := os.ReadFile(s.fileName(key))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("journal %s: %w", key, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("journal %s: unreadable record %s: %w (inspect it, then remove it to start afresh)", key, s.fileName(key), err)
	}
	return true, nil
}

// Delete removes the record of key; a missing record is not an error.
func (s *Store) Delete(key string) error {
	if err := os.Remove(s.fileName(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("journal %s: %w", key, err)
	}
	return syncDir(s.Dir)
}

// Keys lists the keys that have records and start with prefix, sorted.
func (s *Store) Keys(prefix string) ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var out []string
	for _, e := range entries {
		n, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(n, ".") {
			continue
		}
		k, err := unescape(n)
		if err != nil || !strings.HasPrefix(k, prefix) {
			continue
		}
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

func unescape(n string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(n); i++ {
		if n[i] != '_' {
			b.WriteByte(n[i])
			continue
		}
		if i+2 >= len(n) {
			return "", fmt.Errorf("bad escape in %q", n)
		}
		var c byte
		if _, err := fmt.Sscanf(n[i+1:i+3], "%02x", &c); err != nil {
			return "", err
		}
		b.WriteByte(c)
		i += 2
	}
	return b.String(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("journal: syncing %s: %w", dir, err)
	}
	return nil
}
