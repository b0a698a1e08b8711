package metrics

import (
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// weightedHistogram is a histogram of durations that takes n equal
// observations in one call. A fan-out round writes an event to thousands of
// connections at the same moment, so the event's delivery latency is
// observed once with the number of connections it reached, instead of once
// per connection. It is exposed through the client library as a constant
// histogram at each scrape.
type weightedHistogram struct {
	desc    *prometheus.Desc
	upper   []float64       // bucket upper bounds in seconds, ascending
	counts  []atomic.Uint64 // observations per bucket (not cumulative); the last is +Inf
	sumNano atomic.Int64
}

func newWeightedHistogram(name, help string, buckets []float64) *weightedHistogram {
	return &weightedHistogram{
		desc:   prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, nil, nil),
		upper:  buckets,
		counts: make([]atomic.Uint64, len(buckets)+1),
	}
}

// Observe records n observations of d; negative durations count as 0.
func (h *weightedHistogram) Observe(d time.Duration, n int) {
	if n <= 0 {
		return
	}
	d = max(d, 0)
	i := sort.SearchFloat64s(h.upper, d.Seconds()) // first bound >= d
	h.counts[i].Add(uint64(n))
	h.sumNano.Add(int64(d) * int64(n))
}

// Describe implements prometheus.Collector.
func (h *weightedHistogram) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

// Collect implements prometheus.Collector.
func (h *weightedHistogram) Collect(ch chan<- prometheus.Metric) {
	buckets := make(map[float64]uint64, len(h.upper))
	var total uint64
	for i, le := range h.upper {
		total += h.counts[i].Load()
		buckets[le] = total
	}
	total += h.counts[len(h.upper)].Load()
	sum := time.Duration(h.sumNano.Load()).Seconds()
	ch <- prometheus.MustNewConstHistogram(h.desc, total, sum, buckets)
}
