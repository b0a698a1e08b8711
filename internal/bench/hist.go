package bench

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Hist is a concurrent HDR-like histogram of non-negative durations in
// nanoseconds: exact below 256 ns, then 128 linear sub-buckets per power of
// two, so any reported quantile is within 0.8 % of the true value. It costs
// 58 KiB whatever the number of samples, and Record is one atomic add, so
// thousands of reader goroutines can share one.
type Hist struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Int64
	max    atomic.Int64
	min    atomic.Int64 // +1, so that zero means "none yet"
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits // 128
	histLinear  = 2 * histSub      // values below this are their own bucket
	histBuckets = histLinear + (64-histSubBits-2)*histSub
)

func histIndex(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	if u < histLinear {
		return int(u)
	}
	shift := bits.Len64(u) - (histSubBits + 1)
	return histLinear + (shift-1)*histSub + int(u>>uint(shift)) - histSub
}

// histValue is the midpoint of bucket i.
func histValue(i int) int64 {
	if i < histLinear {
		return int64(i)
	}
	shift := uint((i-histLinear)/histSub + 1)
	sub := uint64((i-histLinear)%histSub + histSub)
	lo := sub << shift
	return int64(lo + (uint64(1)<<shift)/2)
}

// Record adds one sample of v nanoseconds.
func (h *Hist) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[histIndex(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
	for {
		m := h.min.Load()
		if (m != 0 && v+1 >= m) || h.min.CompareAndSwap(m, v+1) {
			break
		}
	}
}

// Count returns the number of samples.
func (h *Hist) Count() uint64 { return h.total.Load() }

// Quantile returns the value at quantile q (0..1) in nanoseconds; the exact
// maximum for q >= 1, and 0 when there are no samples.
func (h *Hist) Quantile(q float64) int64 {
	total := h.total.Load()
	if total == 0 {
		return 0
	}
	if q >= 1 {
		return h.max.Load()
	}
	if q <= 0 {
		return h.min.Load() - 1
	}
	rank := uint64(math.Ceil(q * float64(total)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			v := histValue(i)
			if m := h.max.Load(); v > m {
				v = m
			}
			if m := h.min.Load() - 1; v < m {
				v = m
			}
			return v
		}
	}
	return h.max.Load()
}

// Quantiles is a latency summary in milliseconds.
type Quantiles struct {
	Count uint64  `json:"count"`
	Min   float64 `json:"min_ms"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func ms(ns int64) float64 { return float64(ns) / float64(time.Millisecond) }

// Summary returns the quantiles of h.
func (h *Hist) Summary() Quantiles {
	n := h.total.Load()
	if n == 0 {
		return Quantiles{}
	}
	return Quantiles{
		Count: n,
		Min:   ms(h.Quantile(0)),
		Mean:  ms(h.sum.Load() / int64(n)),
		P50:   ms(h.Quantile(0.50)),
		P95:   ms(h.Quantile(0.95)),
		P99:   ms(h.Quantile(0.99)),
		P999:  ms(h.Quantile(0.999)),
		Max:   ms(h.Quantile(1)),
	}
}
