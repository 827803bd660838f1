package daemon

import (
	"fmt"
	"io"
	"log/slog"
)

// NewLogger returns the daemon's structured logger writing to w: format "text"
// (logfmt) or "json", at level (slog.LevelInfo, or LevelDebug for the engine's
// per-guest output). journal says the output goes to journald (JOURNAL_STREAM is
// set): text records then carry no timestamp, which journald adds itself.
func NewLogger(w io.Writer, format string, level slog.Level, journal bool) (*slog.Logger, error) {
	o := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		if journal {
			o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}
		}
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}
