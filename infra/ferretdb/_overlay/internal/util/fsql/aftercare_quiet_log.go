// Aftercare patch (copied into FerretDB's internal/util/fsql by infra/localinfra.py at build time).
//
// fsql logs every SQL statement at debug level as `l.With(slog.Any("args", args)).DebugContext(...)`,
// twice per statement. slog's text handler formats the attributes in With, before the level is
// checked, so with debug off each statement still quoted its arguments, the whole document JSON
// among them: 7.6 % of the store's CPU in a triage bench (perf). The logger fsql gets is wrapped
// so that With costs nothing while debug lines are off; the lines themselves are unchanged.
package fsql

import (
	"context"
	"log/slog"
)

// aftercareQuietHandler drops attributes added by With while its handler does not log debug lines
// (fsql adds attributes only to its debug lines).
type aftercareQuietHandler struct {
	slog.Handler
}

func (h aftercareQuietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if !h.Handler.Enabled(context.Background(), slog.LevelDebug) {
		return h
	}

	return aftercareQuietHandler{h.Handler.WithAttrs(attrs)}
}

func (h aftercareQuietHandler) WithGroup(name string) slog.Handler {
	return aftercareQuietHandler{h.Handler.WithGroup(name)}
}

// aftercareQuiet returns l with a handler whose With is free while debug lines are off.
func aftercareQuiet(l *slog.Logger) *slog.Logger {
	return slog.New(aftercareQuietHandler{l.Handler()})
}
