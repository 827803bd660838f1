package hook

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeScript creates an executable script named name in dir.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// parseEnv turns `env -0`-style NUL-separated output into a map.
func parseEnv(b []byte) map[string]string {
	m := map[string]string{}
	for kv := range strings.SplitSeq(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

var fullEnv = Env{
	Phase:    SnapCreatePost,
	VMID:     "105",
	VMName:   "web 1",
	VMType:   "qemu",
	Node:     "kvm01",
	Label:    "hourly",
	Keep:     3,
	SnapName: "autohourly260928070002",
	VMState:  true,
	Duration: 580205400 * time.Nanosecond,
	State:    true,
	Debug:    false,
	DryRun:   true,
}

var wantVars = map[string]string{
	"PHASE":     "snap-create-post",
	"VMID":      "105",
	"VMNAME":    "web 1",
	"VMTYPE":    "qemu",
	"LABEL":     "hourly",
	"KEEP":      "3",
	"SNAP_NAME": "autohourly260928070002",
	"VMSTATE":   "1",
	"DURATION":  "0.5802054",
	"STATE":     "1",
	"DEBUG":     "0",
	"DRY_RUN":   "1",
}

func TestVars(t *testing.T) {
	got := fullEnv.Vars()
	var want []string
	for _, prefix := range []string{"CV4PVE_AUTOSNAP_", "AUTOSNAP_"} {
		for _, k := range []string{"PHASE", "VMID", "VMNAME", "VMTYPE", "LABEL", "KEEP", "SNAP_NAME", "VMSTATE", "DURATION", "STATE", "DEBUG", "DRY_RUN"} {
			want = append(want, prefix+k+"="+wantVars[k])
		}
	}
	want = append(want, "AUTOSNAP_NODE=kvm01")
	if !slices.Equal(got, want) {
		t.Errorf("Vars():\n got %q\nwant %q", got, want)
	}
}

func TestVarsJobPhase(t *testing.T) {
	m := parseEnv([]byte(strings.Join(Env{Phase: SnapJobStart, Label: "daily", Keep: 7, State: true}.Vars(), "\x00")))
	want := map[string]string{
		"PHASE": "snap-job-start", "VMID": "", "VMNAME": "", "VMTYPE": "", "LABEL": "daily", "KEEP": "7",
		"SNAP_NAME": "", "VMSTATE": "0", "DURATION": "0", "STATE": "1", "DEBUG": "0", "DRY_RUN": "0",
	}
	for k, v := range want {
		for _, prefix := range []string{"CV4PVE_AUTOSNAP_", "AUTOSNAP_"} {
			if got, ok := m[prefix+k]; !ok || got != v {
				t.Errorf("%s%s = %q (present %v), want %q", prefix, k, got, ok, v)
			}
		}
	}
	if got, ok := m["AUTOSNAP_NODE"]; !ok || got != "" {
		t.Errorf("AUTOSNAP_NODE = %q (present %v), want empty", got, ok)
	}
	if len(m) != 25 {
		t.Errorf("got %d variables, want 25", len(m))
	}
}

func TestDurationFormat(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                       "0",
		500 * time.Millisecond:  "0.5",
		12 * time.Second:        "12",
		90*time.Second + 1:      "90.000000001",
		3*time.Hour + time.Hour: "14400",
	} {
		m := parseEnv([]byte(strings.Join(Env{Duration: d}.Vars(), "\x00")))
		if got := m["CV4PVE_AUTOSNAP_DURATION"]; got != want {
			t.Errorf("Duration %v: got %q, want %q", d, got, want)
		}
		if got := m["AUTOSNAP_DURATION"]; got != want {
			t.Errorf("Duration %v: AUTOSNAP_DURATION got %q, want %q", d, got, want)
		}
	}
}

func TestPhases(t *testing.T) {
	ps := Phases()
	if len(ps) != 10 || ps[0] != CleanJobStart || ps[9] != SnapRemoveAbort {
		t.Errorf("Phases() = %q", ps)
	}
}

func TestRunEnvironment(t *testing.T) {
	// Inherited variables pass through; ours override stale inherited ones.
	t.Setenv("AUTOSNAP_TEST_INHERITED", "kept")
	t.Setenv("CV4PVE_AUTOSNAP_PHASE", "stale")
	t.Setenv("AUTOSNAP_KEEP", "99")
	dir := t.TempDir()
	envOut := filepath.Join(dir, "env.out")
	p := writeScript(t, dir, "hook.sh", "#!/bin/sh\nenv -0 > \"$ENV_OUT\"\n")
	t.Setenv("ENV_OUT", envOut)

	r := &Runner{Path: p}
	if err := r.Run(context.Background(), fullEnv, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(envOut)
	if err != nil {
		t.Fatal(err)
	}
	m := parseEnv(b)
	for k, v := range wantVars {
		for _, prefix := range []string{"CV4PVE_AUTOSNAP_", "AUTOSNAP_"} {
			if got := m[prefix+k]; got != v {
				t.Errorf("%s%s = %q, want %q", prefix, k, got, v)
			}
		}
	}
	if got := m["AUTOSNAP_NODE"]; got != "kvm01" {
		t.Errorf("AUTOSNAP_NODE = %q", got)
	}
	if got := m["AUTOSNAP_TEST_INHERITED"]; got != "kept" {
		t.Errorf("inherited variable = %q, want kept", got)
	}
}

func TestRunOutputAndStdin(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "hook.sh", `#!/bin/sh
echo "out $CV4PVE_AUTOSNAP_PHASE"
echo "err $AUTOSNAP_VMID" >&2
if read -r line; then echo "stdin: $line"; else echo "stdin empty"; fi
`)
	var out bytes.Buffer
	if err := (&Runner{Path: p}).Run(context.Background(), fullEnv, &out); err != nil {
		t.Fatal(err)
	}
	if want := "out snap-create-post\nerr 105\nstdin empty\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
}

func TestRunInterpreterFromShebang(t *testing.T) {
	if _, err := os.Stat("/usr/bin/env"); err != nil {
		t.Fatal("no /usr/bin/env: the test images have it")
	}
	dir := t.TempDir()
	p := writeScript(t, dir, "hook", "#!/usr/bin/env bash\necho \"${BASH_VERSION:+bash}\"\n")
	var out bytes.Buffer
	if err := (&Runner{Path: p}).Run(context.Background(), fullEnv, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "bash\n" {
		t.Errorf("output %q, want bash", out.String())
	}
}

func TestRunExitStatus(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "fail.sh", "#!/bin/sh\necho before\nexit 3\n")
	var out bytes.Buffer
	err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapCreatePre}, &out)
	want := "hook script " + p + " (phase snap-create-pre) exited with status 3"
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	if out.String() != "before\n" {
		t.Errorf("output %q", out.String())
	}
}

func TestRunSignal(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "kill.sh", "#!/bin/sh\nkill -TERM $$\n")
	err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: CleanJobEnd}, nil)
	if err == nil || !strings.Contains(err.Error(), "terminated by signal terminated") {
		t.Errorf("error %v", err)
	}
}

// alive reports whether pid exists and is not a zombie: in a container PID 1
// may never reap the orphans we killed.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d still alive", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestRunTimeoutKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	t.Setenv("PID_FILE", pidFile)
	p := writeScript(t, dir, "slow.sh", "#!/bin/sh\necho started\nsleep 100 &\necho $! > \"$PID_FILE\"\nwait\n")

	var out bytes.Buffer
	start := time.Now()
	err := (&Runner{Path: p, Timeout: 500 * time.Millisecond}).Run(context.Background(), Env{Phase: SnapJobEnd}, &out)
	elapsed := time.Since(start)
	want := "hook script " + p + " (phase snap-job-end) killed after timeout of 500ms"
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	if elapsed > 5*time.Second {
		t.Errorf("Run took %v", elapsed)
	}
	if out.String() != "started\n" {
		t.Errorf("output %q", out.String())
	}
	waitDead(t, readPid(t, pidFile))
}

func TestRunCanceled(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "slow.sh", "#!/bin/sh\nsleep 100\n")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	err := (&Runner{Path: p}).Run(ctx, Env{Phase: SnapJobEnd}, nil)
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("error %v", err)
	}
}

// An escaped grandchild (own session) holding the output pipe must not make
// Run hang after the script itself has finished or been killed.
func TestRunEscapedGrandchildDoesNotHang(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tail    string
		timeout time.Duration
		wantErr bool
	}{
		{"exited", "exit 0\n", 0, false},
		{"timed out", "sleep 100\n", 300 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pidFile := filepath.Join(dir, "escaped.pid")
			t.Setenv("PID_FILE", pidFile)
			p := writeScript(t, dir, "bg.sh", "#!/bin/sh\nsetsid sh -c 'echo $$ > \"$PID_FILE\"; exec sleep 100' &\nwhile [ ! -s \"$PID_FILE\" ]; do sleep 0.01; done\n"+tc.tail)
			start := time.Now()
			err := (&Runner{Path: p, Timeout: tc.timeout}).Run(context.Background(), Env{Phase: SnapJobEnd}, &bytes.Buffer{})
			pid := readPid(t, pidFile)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			if (err != nil) != tc.wantErr {
				t.Errorf("error %v, want error %v", err, tc.wantErr)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Run took %v", d)
			}
		})
	}
}

func TestRunNoShellInterpretation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dir with spaces")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := "my hook $(touch pwned); `touch pwned2` & echo x.sh"
	p := writeScript(t, dir, name, "#!/bin/sh\necho \"ran $0\"\n")
	t.Chdir(dir)
	var out bytes.Buffer
	if err := (&Runner{Path: p}).Run(context.Background(), fullEnv, &out); err != nil {
		t.Fatal(err)
	}
	if want := "ran " + p + "\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	for _, f := range []string{"pwned", "pwned2"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s was created: path went through a shell", f)
		}
	}
}

func TestRunRelativePathNotSearchedInPath(t *testing.T) {
	dir := t.TempDir()
	binDir := filepath.Join(dir, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeScript(t, binDir, "hook.sh", "#!/bin/sh\necho from PATH\n")
	writeScript(t, dir, "hook.sh", "#!/bin/sh\necho from cwd\n")
	t.Setenv("PATH", binDir+":"+os.Getenv("PATH"))
	t.Chdir(dir)
	var out bytes.Buffer
	if err := (&Runner{Path: "hook.sh"}).Run(context.Background(), fullEnv, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "from cwd\n" {
		t.Errorf("output %q", out.String())
	}
}

func TestRunStartErrors(t *testing.T) {
	dir := t.TempDir()
	noShebang := writeScript(t, dir, "noshebang", "\x7fELF garbage")
	missing := filepath.Join(dir, "missing.sh")
	for _, p := range []string{noShebang, missing} {
		err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: CleanJobStart}, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "hook script "+p+" (phase clean-job-start): ") {
			t.Errorf("%s: error %v", p, err)
		}
	}
}

func TestRunNoop(t *testing.T) {
	var r *Runner
	if err := r.Run(context.Background(), fullEnv, nil); err != nil {
		t.Errorf("nil Runner: %v", err)
	}
	if err := (&Runner{}).Run(context.Background(), fullEnv, nil); err != nil {
		t.Errorf("empty Path: %v", err)
	}
}

func TestRunConcurrent(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "hook.sh", "#!/bin/sh\necho \"$AUTOSNAP_VMID\"\n")
	r := &Runner{Path: p}
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			var out bytes.Buffer
			id := strconv.Itoa(100 + i)
			err := r.Run(context.Background(), Env{Phase: SnapCreatePre, VMID: id}, &out)
			if err == nil && out.String() != id+"\n" {
				err = errors.New("output " + out.String() + " for " + id)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	ok := writeScript(t, dir, "ok.sh", "#!/bin/sh\n")
	noExec := filepath.Join(dir, "noexec.sh")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.sh")
	if err := os.Symlink(ok, link); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling.sh")
	if err := os.Symlink(filepath.Join(dir, "gone"), dangling); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o755); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.sh")

	for _, tc := range []struct {
		path string
		want string // "" = valid
	}{
		{ok, ""},
		{link, ""},
		{"", "hook script: empty path"},
		{missing, "hook script " + missing + ": not found"},
		{dangling, "hook script " + dangling + ": not found"},
		{dir, "hook script " + dir + ": is a directory, not a file"},
		{fifo, "hook script " + fifo + ": not a regular file (p---------)"},
		{noExec, "hook script " + noExec + ": not executable: run chmod +x " + noExec},
	} {
		err := Validate(tc.path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Validate(%q) = %v, want nil", tc.path, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("Validate(%q) = %v, want %q", tc.path, err, tc.want)
		}
	}
}

func TestRetentionVariable(t *testing.T) {
	has := func(vars []string, prefix string) string {
		for _, v := range vars {
			if s, ok := strings.CutPrefix(v, prefix+"="); ok {
				return s
			}
		}
		return "<absent>"
	}
	if got := has(Env{Keep: 3}.Vars(), "AUTOSNAP_RETENTION"); got != "<absent>" {
		t.Errorf("with --keep: AUTOSNAP_RETENTION = %q, want absent", got)
	}
	vars := Env{Retention: "--keep-daily 7 --keep-weekly 4"}.Vars()
	if got := has(vars, "AUTOSNAP_RETENTION"); got != "--keep-daily 7 --keep-weekly 4" {
		t.Errorf("AUTOSNAP_RETENTION = %q", got)
	}
	if got := has(vars, "CV4PVE_AUTOSNAP_RETENTION"); got != "<absent>" {
		t.Errorf("CV4PVE_AUTOSNAP_RETENTION = %q, want absent (cv4pve has no such variable)", got)
	}
}
