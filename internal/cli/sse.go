package cli

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"strings"
	"time"
)

// SSEEvent is one event of a text/event-stream, as the HTML standard's
// EventSource dispatches it.
type SSEEvent struct {
	// Event is the event name; "message" when the stream gave none.
	Event string
	// Data is the data lines joined by "\n".
	Data string
	// ID is the last event id of the stream when the event was dispatched.
	ID string
}

// SSEReader reads Server-Sent Events from a stream, following the parsing
// rules of the HTML standard (§9.2.6): lines end with CRLF, LF or CR;
// comment lines start with ':'; "data" lines accumulate; "id" sets the last
// event id (ignored when it contains NUL); "retry" takes only digits; a blank
// line dispatches the event unless it has no data; an event cut off by the
// end of the stream is dropped.
type SSEReader struct {
	sc     *bufio.Scanner
	first  bool
	lastID string
	// Retry is the reconnection time the stream last advised (retry: field);
	// zero until it gives one.
	Retry time.Duration
}

// NewSSEReader returns a reader of r. lastID is the last event id known
// before the stream started (the Last-Event-ID sent), kept until the
// stream sets another.
func NewSSEReader(r io.Reader, lastID string) *SSEReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 32<<20)
	sc.Split(splitSSELines)
	return &SSEReader{sc: sc, first: true, lastID: lastID}
}

// LastID returns the last event id the stream set.
func (r *SSEReader) LastID() string { return r.lastID }

// Next returns the next event. At the end of the stream it returns io.EOF,
// or the error that ended it.
func (r *SSEReader) Next() (SSEEvent, error) {
	var (
		name    string
		data    strings.Builder
		hasData bool
	)
	for r.sc.Scan() {
		line := r.sc.Bytes()
		if r.first {
			r.first = false
			line = bytes.TrimPrefix(line, []byte("\uFEFF"))
		}
		if len(line) == 0 {
			if !hasData {
				name = ""
				continue
			}
			ev := SSEEvent{Event: name, Data: strings.TrimSuffix(data.String(), "\n"), ID: r.lastID}
			if ev.Event == "" {
				ev.Event = "message"
			}
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "event":
			name = string(value)
		case "data":
			data.Write(value)
			data.WriteByte('\n')
			hasData = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.lastID = string(value)
			}
		case "retry":
			if n, err := strconv.ParseUint(string(value), 10, 31); err == nil && isDigits(value) {
				r.Retry = time.Duration(n) * time.Millisecond
			}
		}
	}
	if err := r.sc.Err(); err != nil {
		return SSEEvent{}, err
	}
	return SSEEvent{}, io.EOF
}

func isDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// splitSSELines is a bufio.SplitFunc for lines ending in CRLF, LF or CR.
func splitSSELines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	for i, c := range data {
		switch c {
		case '\n':
			return i + 1, data[:i], nil
		case '\r':
			if i+1 < len(data) {
				if data[i+1] == '\n' {
					return i + 2, data[:i], nil
				}
				return i + 1, data[:i], nil
			}
			if atEOF {
				return i + 1, data[:i], nil
			}
			return 0, nil, nil // CR at the end of the buffer: is LF next?
		}
	}
	if atEOF && len(data) > 0 {
		// An unterminated last line: the event it belongs to is incomplete
		// and is dropped, but the line is still a line.
		return len(data), nil, bufio.ErrFinalToken
	}
	return 0, nil, nil
}
