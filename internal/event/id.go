// Package event defines the event of SPEC §1: its id, its validation when
// published, and its encoded forms, built once per event and shared by every
// connection that receives it.
package event

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ID identifies an accepted event. It is written "<ms>-<seq>" like a Redis
// stream id: Ms is the acceptance time in Unix milliseconds and Seq orders
// events accepted in the same millisecond. IDs compare by (Ms, Seq).
type ID struct {
	Ms  uint64
	Seq uint64
}

// ErrBadID is returned by ParseID for text that is not an event id.
var ErrBadID = errors.New("not an event id (want <milliseconds>-<sequence>)")

// ParseID parses the text form of an ID.
func ParseID(s string) (ID, error) {
	if len(s) == 0 || len(s) > 41 {
		return ID{}, ErrBadID
	}
	msText, seqText, ok := strings.Cut(s, "-")
	if !ok {
		return ID{}, ErrBadID
	}
	ms, err := parseDecimal(msText)
	if err != nil {
		return ID{}, ErrBadID
	}
	seq, err := parseDecimal(seqText)
	if err != nil {
		return ID{}, ErrBadID
	}
	return ID{Ms: ms, Seq: seq}, nil
}

// parseDecimal accepts only plain decimal digits: no sign, no spaces, no
// leading "+", so that an id has exactly one spelling.
func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 20 {
		return 0, ErrBadID
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, ErrBadID
		}
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, ErrBadID
	}
	return strconv.ParseUint(s, 10, 64)
}

// String returns the wire form of the id.
func (id ID) String() string {
	return string(id.AppendText(make([]byte, 0, 24)))
}

// AppendText appends the wire form of the id to b.
func (id ID) AppendText(b []byte) []byte {
	b = strconv.AppendUint(b, id.Ms, 10)
	b = append(b, '-')
	return strconv.AppendUint(b, id.Seq, 10)
}

// IsZero reports whether id is the zero id "0-0", which precedes every event.
func (id ID) IsZero() bool { return id.Ms == 0 && id.Seq == 0 }

// Less reports whether id sorts before other.
func (id ID) Less(other ID) bool {
	if id.Ms != other.Ms {
		return id.Ms < other.Ms
	}
	return id.Seq < other.Seq
}

// Compare returns -1, 0 or +1 as id sorts before, equal to or after other.
func (id ID) Compare(other ID) int {
	switch {
	case id.Less(other):
		return -1
	case other.Less(id):
		return 1
	default:
		return 0
	}
}

// Next returns the smallest id after id.
func (id ID) Next() ID {
	if id.Seq == ^uint64(0) {
		return ID{Ms: id.Ms + 1}
	}
	return ID{Ms: id.Ms, Seq: id.Seq + 1}
}

// NextAt returns the id to assign to an event accepted at unix millisecond
// ms when the last assigned id is last: ids never go backwards, even when
// the clock does.
func NextAt(last ID, ms uint64) ID {
	if ms > last.Ms {
		return ID{Ms: ms}
	}
	return last.Next()
}

// MustParseID is ParseID for tests and constants; it panics on bad input.
func MustParseID(s string) ID {
	id, err := ParseID(s)
	if err != nil {
		panic(fmt.Sprintf("event.MustParseID(%q): %v", s, err))
	}
	return id
}
