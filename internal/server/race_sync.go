package server

import "github.com/lesismal/nbio"

// The nbio engine hands a new connection from its accept goroutine to a
// poller goroutine through epoll, which the race detector cannot see, so
// every connection's first read would be reported as a race inside nbio.
// Under the race detector each connection's own mutex is taken once on each
// side of that hand-off, which makes the ordering visible; other builds pay
// nothing.
func raceSyncHandoff(g *nbio.Engine) {
	if !raceEnabled {
		return
	}
	g.OnOpen(func(c *nbio.Conn) {
		c.Lock()
		//lint:ignore SA2001 the empty critical section is the hand-off point
		c.Unlock()
	})
	g.OnData(func(c *nbio.Conn, data []byte) {
		c.Lock()
		//lint:ignore SA2001 the empty critical section is the hand-off point
		c.Unlock()
		c.DataHandler()(c, data)
	})
}
