// Package metrics exposes the gateway's Prometheus metrics and the cheap
// counters behind /api/realtime/stats.
//
// Every metric lives in a registry of its own (with the Go runtime and process
// collectors), served by Handler at /metrics. Names are prefixed
// "knowledgehub_". The methods called on the hot path (Delivered,
// ObserveDeliveryLatency, Accepted, ConnOpened, ...) do not allocate: every
// labelled child for the known label values is resolved once, in New, and
// indexed by small integers. Only label values that New could not foresee
// (an unknown transport, close code, reason or store operation) take the
// slower, allocating path through the metric vector.
package metrics

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name of the gateway.
const Namespace = "knowledgehub"

// Transport names, the values of the "transport" label.
const (
	TransportWebSocket = "websocket"
	TransportSSE       = "sse"
)

// OtherType is the "type" label value of events whose type index is -1 or
// otherwise outside the configured types.
const OtherType = "other"

// Handshake rejection reasons, the values of the "reason" label.
const (
	RejectOrigin    = "origin"
	RejectToken     = "token"
	RejectLimit     = "limit"
	RejectParameter = "parameter"
	RejectShutdown  = "shutdown"
)

// Store operations, the values of the "op" label.
const (
	StoreAppend = "append"
	StoreRead   = "read"
)

// DeliveryLatencyBuckets are the upper bounds, in seconds, of the delivery
// latency histogram: 0.5 ms to 5 s.
var DeliveryLatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// StoreLatencyBuckets are the upper bounds, in seconds, of the store latency
// histogram: 50 µs to 5 s.
var StoreLatencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// transports, rejection reasons, close codes and store operations known in
// advance, whose children New resolves.
var (
	transportNames = [...]string{TransportWebSocket, TransportSSE}
	authNames      = [...]string{"anonymous", "authenticated"}
	rejectReasons  = [...]string{RejectOrigin, RejectToken, RejectLimit, RejectParameter, RejectShutdown}
	closeCodes     = [...]int{1001, 1008, 1009, 4001, 4002, 4208}
	storeOps       = [...]string{StoreAppend, StoreRead}
)

const (
	numTransports = len(transportNames)
	numCodes      = len(closeCodes)
)

// Metrics holds the gateway's metrics. All methods are safe for concurrent
// use. A nil *Metrics is not valid; use New.
type Metrics struct {
	start    time.Time
	registry *prometheus.Registry
	handler  http.Handler

	// Atomics read by Snapshot, updated alongside the Prometheus metrics.
	conns     [numTransports][2]atomic.Int64
	otherConn [2]atomic.Int64 // connections of an unknown transport, by auth
	accepted  atomic.Uint64
	delivered atomic.Uint64

	connGauges      *prometheus.GaugeVec
	connChildren    [numTransports][2]prometheus.Gauge
	rejected        *prometheus.CounterVec
	rejectedByIndex [len(rejectReasons)]prometheus.Counter
	acceptedVec     *prometheus.CounterVec
	acceptedByType  []prometheus.Counter // len(types)+1; the last is "other"
	deliveredVec    *prometheus.CounterVec
	deliveredByType []prometheus.Counter // len(types)+1; the last is "other"
	deliveryLatency *weightedHistogram
	slow            *prometheus.CounterVec
	slowByTransport [numTransports]prometheus.Counter
	disconnects     *prometheus.CounterVec
	disconnectsBy   [numTransports][numCodes]prometheus.Counter
	storeLatency    *prometheus.HistogramVec
	storeByOp       [len(storeOps)]prometheus.Observer
	panics          prometheus.Counter
}

// New returns the metrics of a gateway that knows the event types types (in
// the order of their type index), registered in a new registry together
// with the Go runtime and process collectors.
func New(types []string) *Metrics {
	m := &Metrics{start: time.Now(), registry: prometheus.NewRegistry()}
	reg := m.registry

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	m.connGauges = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "connections",
		Help:      "Open client connections, by transport and whether they are authenticated.",
	}, []string{"transport", "auth"})
	for t, tn := range transportNames {
		for a, an := range authNames {
			m.connChildren[t][a] = m.connGauges.WithLabelValues(tn, an)
		}
	}

	m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "handshakes_rejected_total",
		Help:      "Connection attempts refused before the stream started, by reason.",
	}, []string{"reason"})
	for i, r := range rejectReasons {
		m.rejectedByIndex[i] = m.rejected.WithLabelValues(r)
	}

	m.acceptedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "events_accepted_total",
		Help:      "Events accepted by the publish API, by type.",
	}, []string{"type"})
	m.deliveredVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "events_delivered_total",
		Help:      "Event deliveries written to client connections, by type.",
	}, []string{"type"})
	m.acceptedByType = make([]prometheus.Counter, len(types)+1)
	m.deliveredByType = make([]prometheus.Counter, len(types)+1)
	for i, name := range types {
		m.acceptedByType[i] = m.acceptedVec.WithLabelValues(name)
		m.deliveredByType[i] = m.deliveredVec.WithLabelValues(name)
	}
	m.acceptedByType[len(types)] = m.acceptedVec.WithLabelValues(OtherType)
	m.deliveredByType[len(types)] = m.deliveredVec.WithLabelValues(OtherType)

	m.deliveryLatency = newWeightedHistogram("delivery_latency_seconds",
		"Time from an event's acceptance to its being written to a client connection.",
		DeliveryLatencyBuckets)

	m.slow = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "slow_consumers_total",
		Help:      "Connections closed because their send queue overflowed, by transport.",
	}, []string{"transport"})
	for t, tn := range transportNames {
		m.slowByTransport[t] = m.slow.WithLabelValues(tn)
	}

	m.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "disconnects_total",
		Help:      "Server-initiated closes, by transport and close code.",
	}, []string{"transport", "code"})
	for t, tn := range transportNames {
		for c, code := range closeCodes {
			m.disconnectsBy[t][c] = m.disconnects.WithLabelValues(tn, strconv.Itoa(code))
		}
	}

	m.storeLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace,
		Name:      "store_latency_seconds",
		Help:      "Latency of event store operations, by operation.",
		Buckets:   StoreLatencyBuckets,
	}, []string{"op"})
	for i, op := range storeOps {
		m.storeByOp[i] = m.storeLatency.WithLabelValues(op)
	}

	m.panics = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "panics_recovered_total",
		Help:      "Panics recovered in connection and request handlers.",
	})

	reg.MustRegister(
		m.connGauges, m.rejected, m.acceptedVec, m.deliveredVec, m.deliveryLatency,
		m.slow, m.disconnects, m.storeLatency, m.panics,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace,
			Name:      "uptime_seconds",
			Help:      "Seconds since the gateway started.",
		}, func() float64 { return time.Since(m.start).Seconds() }),
	)

	m.handler = promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry: reg,
	}))
	return m
}

// Registry returns the registry holding every metric of m, for tests and
// for registering further collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler returns the Prometheus exposition handler for m's registry, to be
// served at /metrics.
func (m *Metrics) Handler() http.Handler { return m.handler }

// transportIndex returns the index of transport in transportNames, or -1.
func transportIndex(transport string) int {
	switch transport {
	case TransportWebSocket:
		return 0
	case TransportSSE:
		return 1
	}
	return -1
}

func authIndex(authenticated bool) int {
	if authenticated {
		return 1
	}
	return 0
}

// ConnOpened counts a connection of transport ("websocket" or "sse") that
// has started streaming.
func (m *Metrics) ConnOpened(transport string, authenticated bool) {
	m.connDelta(transport, authenticated, 1)
}

// ConnClosed counts the end of a connection that ConnOpened counted, with
// the same arguments.
func (m *Metrics) ConnClosed(transport string, authenticated bool) {
	m.connDelta(transport, authenticated, -1)
}

func (m *Metrics) connDelta(transport string, authenticated bool, d int64) {
	a := authIndex(authenticated)
	if t := transportIndex(transport); t >= 0 {
		m.conns[t][a].Add(d)
		m.connChildren[t][a].Add(float64(d))
		return
	}
	m.otherConn[a].Add(d)
	m.connGauges.WithLabelValues(transport, authNames[a]).Add(float64(d))
}

// HandshakeRejected counts a connection attempt refused before the stream
// started, by reason: "origin", "token", "limit", "parameter" or
// "shutdown".
func (m *Metrics) HandshakeRejected(reason string) {
	for i, r := range rejectReasons {
		if r == reason {
			m.rejectedByIndex[i].Inc()
			return
		}
	}
	m.rejected.WithLabelValues(reason).Inc()
}

// typeCounter returns the counter of typeIndex in byType, whose last
// element counts every index outside the configured types.
func typeCounter(byType []prometheus.Counter, typeIndex int) prometheus.Counter {
	if uint(typeIndex) < uint(len(byType)-1) {
		return byType[typeIndex]
	}
	return byType[len(byType)-1]
}

// Accepted counts n events of the type with index typeIndex (-1 or any
// index outside the configured types: "other") accepted by the publish
// API. n <= 0 is ignored.
func (m *Metrics) Accepted(typeIndex int, n int) {
	if n <= 0 {
		return
	}
	m.accepted.Add(uint64(n))
	typeCounter(m.acceptedByType, typeIndex).Add(float64(n))
}

// Delivered counts n deliveries of events of the type with index typeIndex
// (-1 or any index outside the configured types: "other") written to client
// connections. n <= 0 is ignored.
func (m *Metrics) Delivered(typeIndex int, n int) {
	if n <= 0 {
		return
	}
	m.delivered.Add(uint64(n))
	typeCounter(m.deliveredByType, typeIndex).Add(float64(n))
}

// ObserveDeliveryLatency records n deliveries that took d from an event's
// acceptance to its being written to a connection. A negative d (clocks of
// two nodes disagreeing) counts as 0.
func (m *Metrics) ObserveDeliveryLatency(d time.Duration, n int) {
	m.deliveryLatency.Observe(d, n)
}

// SlowConsumer counts a connection of transport closed because its send
// queue overflowed.
func (m *Metrics) SlowConsumer(transport string) {
	if t := transportIndex(transport); t >= 0 {
		m.slowByTransport[t].Inc()
		return
	}
	m.slow.WithLabelValues(transport).Inc()
}

// Disconnect counts a server-initiated close of a connection of transport,
// by close code (1001, 1008, 1009, 4001, 4002, 4208; SSE streams use the
// same codes for why the stream ended).
func (m *Metrics) Disconnect(transport string, code int) {
	if t := transportIndex(transport); t >= 0 {
		for c, known := range closeCodes {
			if known == code {
				m.disconnectsBy[t][c].Inc()
				return
			}
		}
	}
	m.disconnects.WithLabelValues(transport, strconv.Itoa(code)).Inc()
}

// ObserveStore records the latency of a store operation, op "append" or
// "read".
func (m *Metrics) ObserveStore(op string, d time.Duration) {
	for i, known := range storeOps {
		if known == op {
			m.storeByOp[i].Observe(d.Seconds())
			return
		}
	}
	m.storeLatency.WithLabelValues(op).Observe(d.Seconds())
}

// PanicRecovered counts a panic recovered in a handler.
func (m *Metrics) PanicRecovered() { m.panics.Inc() }

// Stats is the JSON body of GET /api/realtime/stats.
type Stats struct {
	// Connections counts the open connections.
	Connections struct {
		// Total is every open connection; WebSocket + SSE, plus any of an
		// unknown transport.
		Total int64 `json:"total"`
		// WebSocket is the open WebSocket connections.
		WebSocket int64 `json:"websocket"`
		// SSE is the open Server-Sent Events streams.
		SSE int64 `json:"sse"`
		// Authenticated is the open connections holding a valid token.
		Authenticated int64 `json:"authenticated"`
		// Anonymous is the open connections without a token.
		Anonymous int64 `json:"anonymous"`
	} `json:"connections"`
	// Events counts the events handled since start.
	Events struct {
		// Accepted is the events accepted by the publish API.
		Accepted uint64 `json:"accepted"`
		// Delivered is the event deliveries written to connections.
		Delivered uint64 `json:"delivered"`
	} `json:"events"`
	// UptimeSeconds is the time since the gateway started.
	UptimeSeconds float64 `json:"uptime_seconds"`
}

// Snapshot returns the current counts. It reads a few atomics and does not
// gather the registry. The counts are read one by one, so a snapshot taken
// while connections open and close may be off by those in flight; every
// count is one that held at some instant during the call.
func (m *Metrics) Snapshot() Stats {
	var s Stats
	var byAuth [2]int64
	for a := range byAuth {
		byAuth[a] = m.otherConn[a].Load()
	}
	var byTransport [numTransports]int64
	for t := range byTransport {
		for a := range byAuth {
			n := m.conns[t][a].Load()
			byTransport[t] += n
			byAuth[a] += n
		}
	}
	s.Connections.WebSocket = byTransport[0]
	s.Connections.SSE = byTransport[1]
	s.Connections.Anonymous = byAuth[0]
	s.Connections.Authenticated = byAuth[1]
	s.Connections.Total = byAuth[0] + byAuth[1]
	s.Events.Accepted = m.accepted.Load()
	s.Events.Delivered = m.delivered.Load()
	s.UptimeSeconds = time.Since(m.start).Seconds()
	return s
}
