package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// maxArgFileDepth bounds nested @file references.
const maxArgFileDepth = 32

// expandArgs rewrites a command line the way cv4pve-autosnap's parser
// (System.CommandLine) reads it, so that cobra then parses what cv4pve would:
//
//   - @FILE is replaced by the options in FILE (a response file, see readArgFile),
//     and an @ token in a file is expanded too; paths are relative to the working
//     directory. An @ token that is the value of an option (--vmid @all) stays a
//     value, as does everything after "--", and so does one that names no file
//     where the command takes arguments (snapshot list @tag-db): cv4pve-autosnap's
//     commands take none.
//   - --name:value is --name=value (System.CommandLine splits at the first ':' or '=').
//   - A boolean option followed by true or false (any case) takes it as its value:
//     --state true, --validate-certificate false.
//   - -?, /? and /h ask for help, as -h and --help do (System.CommandLine's aliases).
//
// The files' contents never appear in errors: they are where cv4pve's maintainer
// recommends keeping credentials. A file that holds --password or --api-token and
// that other users may read is warned about on warn.
func expandArgs(root *cobra.Command, args []string, warn io.Writer) ([]string, error) {
	x := &argExpander{root: root, cmd: root, out: make([]string, 0, len(args)), boolAt: -1, warn: warn}
	for _, a := range args {
		if err := x.push(a); err != nil {
			return nil, err
		}
	}
	return x.out, nil
}

type argExpander struct {
	root, cmd *cobra.Command // cmd: the command the tokens so far name
	out       []string
	valueNext bool     // the next token is an option's value
	boolAt    int      // index in out of a boolean option that may take the next token, or -1
	dashdash  bool     // "--" was seen: the rest is positional
	files     []string // the @files being read, outermost first (absolute paths)
	warn      io.Writer
}

func (x *argExpander) push(tok string) error {
	isFile := len(tok) > 1 && tok[0] == '@' && !x.dashdash && !x.valueNext && (!takesArgs(x.cmd) || exists(tok[1:]))
	if at := x.boolAt; at >= 0 && !isFile {
		// The value may also come as the first token of an @file.
		x.boolAt = -1
		if v := strings.ToLower(tok); v == "true" || v == "false" {
			x.out[at] += "=" + v
			return nil
		}
	}
	switch {
	case x.dashdash:
	case x.valueNext:
		x.valueNext = false
	case tok == "--":
		x.dashdash = true
	case isFile:
		return x.file(tok[1:])
	case tok == "-?" || tok == "/?" || tok == "/h":
		tok = "--help"
	case !strings.HasPrefix(tok, "-") || tok == "-":
		if sub := findSub(x.cmd, tok); sub != nil {
			x.cmd = sub
		}
	default:
		name, value, sep := tok, "", byte(0)
		if i := strings.IndexAny(tok, ":="); i > 0 {
			name, value, sep = tok[:i], tok[i+1:], tok[i]
		}
		fl := x.lookup(name)
		switch {
		case fl == nil:
		case sep != 0:
			if fl.Value.Type() == "bool" {
				value = strings.ToLower(value)
			}
			tok = name + "=" + value
		case fl.Value.Type() == "bool":
			x.boolAt = len(x.out)
		case fl.NoOptDefVal == "" && (strings.HasPrefix(name, "--") || len(name) == 2):
			x.valueNext = true
		}
	}
	x.out = append(x.out, tok)
	return nil
}

// file pushes the tokens of the response file path.
func (x *argExpander) file(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	for _, open := range x.files {
		if open == abs {
			return fmt.Errorf("response file %s includes itself (through @ lines): remove the loop", path)
		}
	}
	if len(x.files) >= maxArgFileDepth {
		return fmt.Errorf("response file %s: more than %d nested @files", path, maxArgFileDepth)
	}
	tokens, err := readArgFile(path)
	if err != nil {
		return err
	}
	x.warnReadable(path, tokens)
	x.files = append(x.files, abs)
	defer func() { x.files = x.files[:len(x.files)-1] }()
	for _, t := range tokens {
		if err := x.push(t); err != nil {
			return err
		}
	}
	return nil
}

// warnReadable warns when the response file path holds credentials and its mode
// lets users other than its owner read it.
func (x *argExpander) warnReadable(path string, tokens []string) {
	secret := slices.ContainsFunc(tokens, func(t string) bool {
		return strings.HasPrefix(t, "--password") || strings.HasPrefix(t, "--api-token")
	})
	fi, err := os.Stat(path)
	if !secret || err != nil || fi.Mode().Perm()&0o077 == 0 || x.warn == nil {
		return
	}
	fmt.Fprintf(x.warn, "WARNING: response file %s holds credentials and other users may read it (mode %04o): chmod 600 %s\n", path, fi.Mode().Perm(), path)
}

// lookup finds the option named by tok ("--name" or "-x"): on the command named so
// far and its parents first, then on any command, since cobra accepts a command's
// options before its name.
func (x *argExpander) lookup(tok string) *pflag.Flag {
	find := func(c *cobra.Command) *pflag.Flag {
		fs := []*pflag.FlagSet{c.Flags(), c.InheritedFlags()}
		for _, f := range fs {
			if long, ok := strings.CutPrefix(tok, "--"); ok {
				if fl := f.Lookup(long); fl != nil {
					return fl
				}
			} else if len(tok) == 2 {
				if fl := f.ShorthandLookup(tok[1:]); fl != nil {
					return fl
				}
			}
		}
		return nil
	}
	if fl := find(x.cmd); fl != nil {
		return fl
	}
	var found *pflag.Flag
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if found == nil {
				found = find(sub)
			}
			walk(sub)
		}
	}
	walk(x.root)
	return found
}

// takesArgs reports whether cmd takes positional arguments: its usage line names
// one (an upper-case word such as VM or NAME after the command's name).
func takesArgs(cmd *cobra.Command) bool {
	for _, w := range strings.Fields(cmd.Use)[1:] {
		w = strings.TrimLeft(w, "[")
		if w != "" && w[0] >= 'A' && w[0] <= 'Z' {
			return true
		}
	}
	return false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// findSub returns cmd's subcommand named (or aliased) name.
func findSub(cmd *cobra.Command, name string) *cobra.Command {
	for _, c := range cmd.Commands() {
		if c.Name() == name || c.HasAlias(name) {
			return c
		}
	}
	return nil
}

// readArgFile reads a response file as System.CommandLine does: each line is
// trimmed; empty lines and lines starting with '#' are skipped; the others are
// split into tokens at white space, where double quotes group words into one
// token and are removed (see splitCommandLine). So a file may hold one option per
// line (--host=pve1, or --host and pve1 on two lines) or several on one line.
// Lines end with \n, \r\n or \r; a UTF-8 byte order mark is ignored.
func readArgFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("response file %s not found (an argument starting with @ names a file of options, one per line)", path)
	case err != nil:
		return nil, fmt.Errorf("response file %s: %w", path, err)
	}
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	text := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(b))
	var tokens []string
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimFunc(line, unicode.IsSpace)
		if line == "" || line[0] == '#' {
			continue
		}
		tokens = append(tokens, splitCommandLine(line)...)
	}
	return tokens, nil
}

// splitCommandLine splits a line into tokens as System.CommandLine's
// CommandLineStringSplitter does: white space separates tokens except inside double
// quotes; the quotes are removed. A token that starts with a quote ends at the
// closing quote ("a"b is two tokens, "" is an empty token); a quote inside a token
// only switches quoting on or off (--host="a b" is --host=a b). A quote left open at
// the start of a token drops that token.
func splitCommandLine(line string) []string {
	var out []string
	rs := []rune(line)
	start := 0
	inWord, inQuote := false, false
	token := func(end int) string { return strings.ReplaceAll(string(rs[start:end]), `"`, "") }
	for pos, c := range rs {
		switch {
		case unicode.IsSpace(c):
			if !inQuote && inWord {
				out = append(out, token(pos))
				inWord = false
			}
		case c == '"':
			switch {
			case inWord:
				inQuote = !inQuote
			case inQuote:
				out = append(out, token(pos))
				inQuote = false
			default:
				start, inQuote = pos+1, true
			}
		default:
			if !inWord && !inQuote {
				start, inWord = pos, true
			}
		}
	}
	if inWord {
		out = append(out, token(len(rs)))
	}
	return out
}
