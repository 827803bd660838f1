package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// A hook whose output does not end in a newline must not run into the next line.
func TestRunOutputEndsWithNewline(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ body, want string }{
		{"printf 'no newline'", "no newline\n"},
		{"printf 'line\\n'", "line\n"},
		{"printf 'a\\nb'", "a\nb\n"},
		{"true", ""},
		{"printf 'out'; printf 'err' >&2", "outerr\n"},
	} {
		p := writeScript(t, dir, "h.sh", "#!/bin/sh\n"+tc.body+"\n")
		var out bytes.Buffer
		if err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapJobStart}, &out); err != nil {
			t.Fatal(err)
		}
		out.WriteString("next line\n")
		if got := out.String(); got != tc.want+"next line\n" {
			t.Errorf("%s: output %q, want %q", tc.body, got, tc.want+"next line\n")
		}
	}
}

// recorder counts what it is given and remembers the largest single write.
type recorder struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	total    int
	maxWrite int
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total += len(p)
	r.maxWrite = max(r.maxWrite, len(p))
	if r.buf.Len() < 1<<20 {
		r.buf.Write(p)
	}
	return len(p), nil
}

// A hook printing far more than the cap: the caller gets the head and the tail, a line
// saying how much was left out, and never more than the cap in all.
func TestRunOutputCapped(t *testing.T) {
	p := writeScript(t, t.TempDir(), "big.sh", "#!/bin/sh\necho FIRST\nhead -c 20000000 /dev/zero | tr '\\0' x\necho\necho LAST\n")
	var rec recorder
	r := &Runner{Path: p, MaxOutput: 64 << 10}
	if err := r.Run(context.Background(), Env{Phase: SnapJobStart}, &rec); err != nil {
		t.Fatal(err)
	}
	out := rec.buf.String()
	if !strings.HasPrefix(out, "FIRST\n") || !strings.HasSuffix(out, "LAST\n") {
		t.Errorf("head or tail missing: %q … %q", out[:min(20, len(out))], out[max(0, len(out)-20):])
	}
	if rec.total > 64<<10+200 {
		t.Errorf("%d bytes passed on, cap is %d", rec.total, 64<<10)
	}
	if !strings.Contains(out, "bytes of hook output not shown]") {
		t.Errorf("the omission is not reported")
	}
	if DefaultMaxOutput <= 0 {
		t.Errorf("DefaultMaxOutput = %d", DefaultMaxOutput)
	}
}

// The head of a hook's output reaches the caller while the hook still runs: it is
// streamed, not collected until the hook exits.
func TestRunOutputStreamed(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	p := writeScript(t, dir, "slow.sh", "#!/bin/sh\necho started\ni=0\nwhile [ ! -e "+gate+" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done\necho done\n")
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		errc <- (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapJobStart}, pw)
		pw.Close()
	}()
	line := make([]byte, len("started\n"))
	if _, err := io.ReadFull(pr, line); err != nil || string(line) != "started\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	select {
	case err := <-errc:
		t.Fatalf("the hook's first line arrived only after it exited (%v)", err)
	default:
	}
	os.WriteFile(gate, nil, 0o600)
	rest, _ := io.ReadAll(pr)
	if string(rest) != "done\n" {
		t.Errorf("rest %q", rest)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestRunExitErrorCarriesCode(t *testing.T) {
	p := writeScript(t, t.TempDir(), "fail.sh", "#!/bin/sh\nexit 42\n")
	err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapCreatePre}, io.Discard)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 42 || ee.Phase != SnapCreatePre {
		t.Fatalf("error %#v, want *ExitError with code 42", err)
	}
	if want := fmt.Sprintf("hook script %s (phase snap-create-pre) exited with status 42", p); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// asNobodyEnv marks the test binary re-executed as nobody by
// TestValidateNotExecutableByUser; it holds the script to validate.
const asNobodyEnv = "AUTOSNAP_HOOK_TEST_AS_NOBODY"

// A script with x bits that the current user may not use (0654: only its group may
// execute it). Root may execute anything with an x bit, so as root the check runs in
// a child re-executed as nobody.
func TestValidateNotExecutableByUser(t *testing.T) {
	if p := os.Getenv(asNobodyEnv); p != "" {
		if os.Geteuid() == 0 {
			t.Fatal("still root in the child")
		}
		if err := Validate(p); err == nil || !strings.Contains(err.Error(), "not executable by the current user") {
			t.Fatalf("Validate = %v", err)
		}
		return
	}
	// A directory everyone may enter, with the script and (as root) a copy of this
	// test binary nobody may run.
	dir, err := os.MkdirTemp("", "autosnap-hook-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "group.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o654); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o654); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if err := Validate(p); err == nil || !strings.Contains(err.Error(), "not executable by the current user") {
			t.Errorf("Validate = %v", err)
		}
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "hook.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestValidateNotExecutableByUser$", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), asNobodyEnv+"="+p)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "PASS") {
		t.Fatalf("the child did not run the check:\n%s", out)
	}
}

// Property: whatever the write sizes, the capped output is the input's head, a
// marker naming the omitted byte count, and the input's tail — or the whole input
// when it fits — always ending in a newline.
func TestCappedWriterProperty(t *testing.T) {
	for seed := range 300 {
		n := (seed * 7919) % 5000
		in := make([]byte, n)
		for i := range in {
			in[i] = "abc\n"[(i*31+seed)%4]
		}
		capBytes := int64(1 + seed%700)
		var out bytes.Buffer
		cw := &cappedWriter{w: &out, head: capBytes - capBytes/2, tailCap: int(capBytes / 2)}
		for rest, step := in, 1+seed%97; len(rest) > 0; {
			k := min(step, len(rest))
			cw.Write(rest[:k])
			rest = rest[k:]
		}
		cw.finish()
		head, tail := int(capBytes-capBytes/2), int(capBytes/2)
		var want string
		if n <= head+tail {
			want = string(in)
		} else {
			h := string(in[:head])
			sep := ""
			if !strings.HasSuffix(h, "\n") {
				sep = "\n"
			}
			want = h + sep + fmt.Sprintf("[… %d bytes of hook output not shown]\n", n-head-tail) + string(in[n-tail:])
		}
		if want != "" && !strings.HasSuffix(want, "\n") {
			want += "\n"
		}
		if out.String() != want {
			t.Fatalf("seed %d (n=%d cap=%d): got %q, want %q", seed, n, capBytes, out.String(), want)
		}
	}
}
