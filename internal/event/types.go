package event

import (
	"fmt"
	"math/bits"
	"strings"
)

// DefaultTypes are the event types every hub knows (SPEC §1).
var DefaultTypes = []string{"CODE_CHANGE", "MEMORY_CREATED", "DECISION_MADE", "ERROR_OCCURRED", "PATTERN_DETECTED"}

// MaxTypes bounds the number of configured event types, so that a type
// filter is a single machine word.
const MaxTypes = 64

// Types is the registry of accepted event types. It is built at start and
// read-only afterwards.
type Types struct {
	names []string
	index map[string]int
}

// NewTypes returns the default types plus extra, which must be upper case
// ([A-Z][A-Z0-9_]*).
func NewTypes(extra []string) (*Types, error) {
	t := &Types{index: make(map[string]int)}
	for _, name := range append(append([]string(nil), DefaultTypes...), extra...) {
		if !ValidTypeName(name) {
			return nil, fmt.Errorf("event type %q: must match [A-Z][A-Z0-9_]* (at most 64 characters)", name)
		}
		if _, dup := t.index[name]; dup {
			continue
		}
		if len(t.names) == MaxTypes {
			return nil, fmt.Errorf("too many event types: at most %d", MaxTypes)
		}
		t.index[name] = len(t.names)
		t.names = append(t.names, name)
	}
	return t, nil
}

// ValidTypeName reports whether name has the syntax of an event type.
func ValidTypeName(name string) bool {
	if name == "" || len(name) > 64 || name[0] < 'A' || name[0] > 'Z' {
		return false
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Index returns the position of name, or -1 when it is not known.
func (t *Types) Index(name string) int {
	if i, ok := t.index[name]; ok {
		return i
	}
	return -1
}

// Names returns the known types in registry order.
func (t *Types) Names() []string { return append([]string(nil), t.names...) }

// TypeSet is a set of event types, as positions in a Types registry. The
// zero TypeSet is empty; a connection with an empty filter receives every type.
type TypeSet uint64

// Has reports whether the set holds the type at index i.
func (s TypeSet) Has(i int) bool { return i >= 0 && i < MaxTypes && s&(1<<uint(i)) != 0 }

// Len returns the number of types in the set.
func (s TypeSet) Len() int { return bits.OnesCount64(uint64(s)) }

// ParseTypeSet parses a comma-separated list of type names. Empty items are
// ignored; an unknown name is an error that lists the known ones.
func (t *Types) ParseTypeSet(list string) (TypeSet, error) {
	var s TypeSet
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := t.Index(name)
		if i < 0 {
			return 0, fmt.Errorf("unknown event type %s (known: %s)", quote(name), strings.Join(t.names, ", "))
		}
		s |= 1 << uint(i)
	}
	return s, nil
}
