// Package protocol holds the parts of the wire contract (SPEC §2–§3) that both
// transports share: close codes, control messages, the JSON error body, the
// connection parameters and the client messages. Each rule lives here once.
package protocol

import "strconv"

// Disconnect is a server-initiated end of a connection: the WebSocket close
// code and reason. SSE streams end for the same reasons; the code is then only
// logged and counted. It implements error so handlers can return it.
type Disconnect struct {
	Code   int
	Reason string
}

func (d Disconnect) Error() string { return "disconnect " + strconv.Itoa(d.Code) + ": " + d.Reason }

// The close codes of SPEC §2. 40xx: do not reconnect with the same
// credentials; 41xx: reconnect after a backoff; 42xx: reconnect at once with
// last_event_id.
var (
	DisconnectNormal       = Disconnect{Code: 1000, Reason: "normal closure"}
	DisconnectShutdown     = Disconnect{Code: 1001, Reason: "server shutting down"}
	DisconnectPolicy       = Disconnect{Code: 1008, Reason: "message rate exceeded"}
	DisconnectErrorRate    = Disconnect{Code: 1008, Reason: "too many bad messages"}
	DisconnectTooLarge     = Disconnect{Code: 1009, Reason: "message too large"}
	DisconnectInvalidToken = Disconnect{Code: 4001, Reason: "invalid token"}
	DisconnectExpired      = Disconnect{Code: 4002, Reason: "token expired"}
	DisconnectRevoked      = Disconnect{Code: 4003, Reason: "access revoked"}
	DisconnectSlow         = Disconnect{Code: 4208, Reason: "slow consumer: send queue overflowed"}
	DisconnectPeerGone     = Disconnect{Code: 1006, Reason: "peer went away"}
)
