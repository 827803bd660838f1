package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"
)

// runCV4PVE runs the script as cv4pve-autosnap's ShellHelper.Execute does on Linux:
// `/bin/bash -c PATH`, so a script without a #! line runs under bash (not /bin/sh)
// and a #! line chooses the interpreter otherwise. PATH is quoted for bash and a name
// without '/' is the file in the working directory (where cv4pve checks that it
// exists; bash would search $PATH), so a path with spaces works as well.
//
// stdout is captured (capped by max as in native mode) and, once the script has
// ended, written to out in one piece, in cv4pve's order: "Script return code: N"
// when N is not 0, then the output unless it is only whitespace, ending with a
// newline. stderr goes to r.Stderr as it comes.
func (r *Runner) runCV4PVE(ctx, runCtx context.Context, env Env, path string, out io.Writer, max int64, what string, timeout time.Duration) error {
	var captured bytes.Buffer
	cw := &cappedWriter{w: &captured, head: max - max/2, tailCap: int(max / 2)}
	stderr := r.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	err := runSplit(runCtx, cw, stderr, env, "/bin/bash", "-c", bashQuote(path))
	cw.finish()
	var block bytes.Buffer
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.ExitCode() > 0 {
		fmt.Fprintf(&block, "Script return code: %d\n", exitErr.ExitCode())
	}
	if strings.TrimSpace(captured.String()) != "" {
		block.Write(captured.Bytes())
	}
	if block.Len() > 0 {
		framed := append([]byte(r.Frame[0]), block.Bytes()...)
		framed = append(framed, r.Frame[1]...)
		// Errors writing the caller's output must not turn the hook's result around.
		_, _ = out.Write(framed)
	}
	return r.result(ctx, runCtx, err, env, what, timeout)
}

// bashQuote makes path one word for bash -c.
func bashQuote(path string) string {
	return "'" + strings.ReplaceAll(path, "'", `'\''`) + "'"
}
