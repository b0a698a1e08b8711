package hub

import "github.com/knowledgehub/realtime/internal/event"

// Subscription is what a connection asked for: who it is, which jobs and
// which event types. Matches is SPEC §1 "Who receives an event", the one
// place that rule is written; the hub's indexes only narrow the candidates.
type Subscription struct {
	User  string              // "" for anonymous connections
	Types event.TypeSet       // empty: every type
	Jobs  map[string]struct{} // nil when subscribed to no job
}

// Matches reports whether a connection with this subscription may receive e.
func (s *Subscription) Matches(e *event.Event) bool {
	if e.UserID != "" && e.UserID != s.User {
		return false // private to another user, or the connection is anonymous
	}
	if e.JobID != "" {
		if _, ok := s.Jobs[e.JobID]; !ok {
			return false
		}
	}
	return s.Types == 0 || s.Types.Has(e.TypeIndex)
}

// NewSubscription returns a subscription to the given jobs.
func NewSubscription(user string, types event.TypeSet, jobs []string) Subscription {
	s := Subscription{User: user, Types: types}
	for _, j := range jobs {
		if s.Jobs == nil {
			s.Jobs = make(map[string]struct{}, len(jobs))
		}
		s.Jobs[j] = struct{}{}
	}
	return s
}
