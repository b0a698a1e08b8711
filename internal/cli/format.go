package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// WireEvent is the event object of SPEC §1 as a client decodes it.
type WireEvent struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
	UserID    string          `json:"user_id,omitempty"`
	JobID     string          `json:"job_id,omitempty"`
	Timestamp string          `json:"timestamp"`
}

// ANSI styles of readable lines.
const (
	ansiReset = "\033[0m"
	ansiDim   = "\033[2m"
	ansiBold  = "\033[1m"
)

var typeColors = map[string]string{
	"CODE_CHANGE":      "\033[36m", // cyan
	"MEMORY_CREATED":   "\033[32m", // green
	"DECISION_MADE":    "\033[35m", // magenta
	"ERROR_OCCURRED":   "\033[31m", // red
	"PATTERN_DETECTED": "\033[33m", // yellow
}

// maxDataChars bounds the data shown on a readable line.
const maxDataChars = 240

// FormatEvent writes one event to w: with raw, the event JSON as received
// and a newline; otherwise a readable line "time type job=... user=...
// data", coloured when color is set. raw is the event JSON.
func FormatEvent(w io.Writer, raw []byte, e *WireEvent, rawMode, color bool) error {
	if rawMode {
		b := make([]byte, 0, len(raw)+1)
		b = append(b, bytes.TrimSpace(raw)...)
		b = append(b, '\n')
		_, err := w.Write(b)
		return err
	}
	var b strings.Builder
	style := func(s, code string) {
		if color && code != "" {
			b.WriteString(code)
			b.WriteString(s)
			b.WriteString(ansiReset)
			return
		}
		b.WriteString(s)
	}
	ts := e.Timestamp
	if t, err := time.Parse(time.RFC3339Nano, e.Timestamp); err == nil {
		ts = t.Local().Format("15:04:05.000")
	}
	style(ts, ansiDim)
	b.WriteByte(' ')
	typeStyle := ansiBold
	if c, ok := typeColors[e.Type]; ok {
		typeStyle += c
	}
	style(fmt.Sprintf("%-16s", e.Type), typeStyle)
	if e.JobID != "" {
		b.WriteByte(' ')
		style("job=", ansiDim)
		b.WriteString(e.JobID)
	}
	if e.UserID != "" {
		b.WriteByte(' ')
		style("user=", ansiDim)
		b.WriteString(e.UserID)
	}
	b.WriteByte(' ')
	b.WriteString(compactData(e.Data))
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// compactData returns data as compact JSON, cut at maxDataChars.
func compactData(data json.RawMessage) string {
	if len(data) == 0 {
		return "null"
	}
	var buf bytes.Buffer
	s := string(data)
	if json.Compact(&buf, data) == nil {
		s = buf.String()
	}
	if utf8.RuneCountInString(s) <= maxDataChars {
		return s
	}
	r := []rune(s)
	return string(r[:maxDataChars]) + "…"
}
