package cluster_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/bench"
)

// EnvBench turns on TestCrossNodeFanout, a measurement rather than a test:
// a comma-separated list of setups among disk1, redis1, redis2, redis3
// (the store and the number of nodes), e.g.
//
//	KNOWLEDGEHUB_CLUSTER_BENCH=disk1,redis1,redis2,redis3 \
//	  go test -count=1 -run TestCrossNodeFanout -v -timeout 10m ./internal/cluster/
//
// `knowledgehub bench fanout` publishes to the server its subscribers are
// connected to, and a bench process counts only the events it published
// itself; it cannot publish on one node and subscribe on others. This
// driver does what its fanout scenario does — --n WebSocket subscribers,
// --rate events/s for --duration published with --concurrency 2 and
// --batch 1, ~200-byte events, a barrier before the clock starts, every
// subscriber must get every acknowledged event once and in order, latency
// from the publish request's creation to the receipt — with the
// subscribers spread round-robin over the nodes and every event published
// to the first node.
const EnvBench = "KNOWLEDGEHUB_CLUSTER_BENCH"

// Parameters of TestCrossNodeFanout, overridable by the environment.
func benchParams() (n int, rate float64, duration time.Duration) {
	n, rate, duration = 1000, 100, 10*time.Second
	if v, err := strconv.Atoi(os.Getenv("KNOWLEDGEHUB_CLUSTER_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.ParseFloat(os.Getenv("KNOWLEDGEHUB_CLUSTER_BENCH_RATE"), 64); err == nil && v > 0 {
		rate = v
	}
	if v, err := time.ParseDuration(os.Getenv("KNOWLEDGEHUB_CLUSTER_BENCH_DURATION")); err == nil && v > 0 {
		duration = v
	}
	return
}

// loadFlags lift the per-IP and per-user limits, as load runs need.
var loadFlags = []string{
	"--connect-rate-per-ip", "0", "--connect-rate-per-user", "0",
	"--max-connections-per-ip", "0", "--max-connections-per-user", "0",
}

type fanoutResult struct {
	Setup            string          `json:"setup"`
	Nodes            int             `json:"nodes"`
	Subscribers      int             `json:"subscribers"`
	PerNode          []int           `json:"subscribers_per_node"`
	Published        int             `json:"published"`
	PublishErrors    int             `json:"publish_errors"`
	Expected         int64           `json:"expected"`
	Delivered        int64           `json:"delivered"`
	Missing          int64           `json:"missing"`
	Duplicates       int64           `json:"duplicates"`
	OrderViolations  int64           `json:"order_violations"`
	DeliveriesPerSec float64         `json:"deliveries_per_sec"`
	Latency          bench.Quantiles `json:"latency"`
	PublishLatency   bench.Quantiles `json:"publish_latency"`
	NodeCPU          float64         `json:"node_cpu_seconds"`
	RedisCPU         float64         `json:"redis_cpu_seconds"`
	Wall             float64         `json:"wall_seconds"`
}

func TestCrossNodeFanout(t *testing.T) {
	setups := os.Getenv(EnvBench)
	if setups == "" {
		t.Skip("a measurement, not a test: set " + EnvBench + "=disk1,redis1,redis2,redis3 to run it")
	}
	if raceEnabled {
		t.Fatal("measure without -race")
	}
	if _, err := bench.RaiseNoFile(); err != nil {
		t.Logf("raise the open-file limit: %v", err)
	}
	n, rate, duration := benchParams()
	var results []fanoutResult
	for _, setup := range strings.Split(setups, ",") {
		setup = strings.TrimSpace(setup)
		t.Run(setup, func(t *testing.T) {
			var c *cluster
			switch setup {
			case "disk1":
				c = newDiskNode(t, loadFlags...)
			case "redis1", "redis2", "redis3":
				c = newCluster(t, int(setup[5]-'0'), loadFlags...)
			default:
				t.Fatalf("unknown setup %q: want disk1, redis1, redis2 or redis3", setup)
			}
			r := runFanout(t, c, n, rate, duration)
			r.Setup = setup
			results = append(results, r)
			b, _ := json.Marshal(r)
			t.Logf("%s", b)
			if r.Missing > 0 || r.Duplicates > 0 || r.OrderViolations > 0 || r.PublishErrors > 0 {
				t.Errorf("%s: %d missing, %d duplicates, %d out of order, %d publish errors", setup, r.Missing, r.Duplicates, r.OrderViolations, r.PublishErrors)
			}
		})
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "| setup | nodes | subscribers per node | published | deliveries/s | p50 ms | p95 ms | p99 ms | max ms | missing / dup / order | node CPU s | Redis CPU s |\n")
	fmt.Fprintf(&tbl, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&tbl, "| %s | %d | %v | %d | %.0f | %.2f | %.2f | %.2f | %.2f | %d / %d / %d | %.2f | %.2f |\n",
			r.Setup, r.Nodes, r.PerNode, r.Published, r.DeliveriesPerSec, r.Latency.P50, r.Latency.P95, r.Latency.P99, r.Latency.Max,
			r.Missing, r.Duplicates, r.OrderViolations, r.NodeCPU, r.RedisCPU)
	}
	t.Logf("n=%d rate=%.0f/s duration=%s\n%s", n, rate, duration, tbl.String())
	if out := os.Getenv("KNOWLEDGEHUB_CLUSTER_BENCH_OUT"); out != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// newDiskNode starts one node with the disk store, for comparison.
func newDiskNode(t *testing.T, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t}
	t.Cleanup(c.stopNodes)
	nd := &node{name: "A", store: []string{"--store", "disk"}}
	nd.configure(t, extra)
	nd.launch(t)
	c.nodes = []*node{nd}
	c.waitUp(nd, extra)
	c.waitReady(nd, 15*time.Second)
	return c
}

// benchSub is one subscriber of the measurement.
type benchSub struct {
	conn     *websocket.Conn
	seen     []uint64
	dups     int64
	order    int64
	lastID   eventID
	haveLast bool
	barrier  atomic.Bool
	lastRecv int64
	done     chan struct{}
}

func runFanout(t *testing.T, c *cluster, n int, rate float64, duration time.Duration) fanoutResult {
	res := fanoutResult{Nodes: len(c.nodes), Subscribers: n, PerNode: make([]int, len(c.nodes))}
	planned := int(math.Floor(rate * duration.Seconds()))
	words := (planned + 63) / 64
	hist := &bench.Hist{}
	var delivered atomic.Int64

	// Connect, 64 at a time, round-robin over the nodes.
	subs := make([]*benchSub, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var connErr atomic.Value
	for i := range n {
		nd := c.nodes[i%len(c.nodes)]
		res.PerNode[i%len(c.nodes)]++
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			d := websocket.Dialer{HandshakeTimeout: 15 * time.Second, ReadBufferSize: 2048, WriteBufferSize: 512}
			conn, _, err := d.Dial(nd.ws, nil)
			if err != nil {
				connErr.Store(fmt.Errorf("subscriber %d on node %s: %w", i, nd.name, err))
				return
			}
			if _, msg, err := conn.ReadMessage(); err != nil || !bytes.Contains(msg, []byte(`"connected"`)) {
				connErr.Store(fmt.Errorf("subscriber %d: welcome %q, %v", i, msg, err))
				conn.Close()
				return
			}
			s := &benchSub{conn: conn, seen: make([]uint64, words), done: make(chan struct{})}
			subs[i] = s
			go s.read(t, hist, &delivered)
		})
	}
	wg.Wait()
	defer func() {
		for _, s := range subs {
			if s != nil {
				s.conn.Close()
				<-s.done
			}
		}
	}()
	if err, _ := connErr.Load().(error); err != nil {
		t.Fatal(err)
	}

	pad := strings.Repeat("x", max(0, 200-len(`{"id":"1733325600123-0","type":"CODE_CHANGE","data":{"bench_seq":1000,"bench_t":1733325600123456789,"pad":""},"timestamp":"2026-12-04T15:20:00.123Z"}`)))
	body := func(seq int64) []byte {
		return fmt.Appendf(nil, `{"type":"CODE_CHANGE","data":{"bench_seq":%d,"bench_t":%d,"pad":"%s"}}`, seq, time.Now().UnixNano(), pad)
	}
	pubNode := c.nodes[0]
	post := func(b []byte) (string, error) {
		req, _ := http.NewRequest(http.MethodPost, pubNode.url+"/api/realtime/events", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+publishKey)
		resp, err := httpClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var out struct{ ID string }
		if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&out) != nil {
			return "", fmt.Errorf("publish answered %d", resp.StatusCode)
		}
		return out.ID, nil
	}

	// Barrier: every subscriber is attached once it saw a marker.
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := post(body(-1)); err != nil {
			t.Fatalf("barrier: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
		all := true
		for _, s := range subs {
			all = all && s.barrier.Load()
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not every subscriber received the barrier event within 15s")
		}
	}

	pids := nodePIDs(c)
	redisPID := 0
	if c.redis != nil {
		port, _ := strconv.Atoi(c.redis.Addr()[strings.LastIndex(c.redis.Addr(), ":")+1:])
		redisPID, _ = bench.PidListeningOn(port)
	}
	cpu0, rcpu0 := cpuOf(pids), cpuOf([]int{redisPID})
	start := time.Now()

	// Publish `planned` events at the planned times, 2 requests at a time.
	var (
		ackMu   sync.Mutex
		acked   = make([]uint64, words)
		nAcked  atomic.Int64
		pubErrs atomic.Int64
		pubHist bench.Hist
		jobs    = make(chan int, 2)
		pwg     sync.WaitGroup
	)
	for range 2 {
		pwg.Go(func() {
			for seq := range jobs {
				t0 := time.Now()
				_, err := post(body(int64(seq)))
				pubHist.Record(int64(time.Since(t0)))
				if err != nil {
					pubErrs.Add(1)
					continue
				}
				ackMu.Lock()
				acked[seq>>6] |= 1 << (seq & 63)
				ackMu.Unlock()
				nAcked.Add(1)
			}
		})
	}
	interval := time.Duration(float64(time.Second) / rate)
	end := start.Add(duration)
	for k := range planned {
		time.Sleep(time.Until(start.Add(time.Duration(k) * interval)))
		if time.Now().After(end) {
			break
		}
		jobs <- k
	}
	close(jobs)
	pwg.Wait()
	res.Published = int(nAcked.Load())
	res.PublishErrors = int(pubErrs.Load())
	res.PublishLatency = pubHist.Summary()
	res.Expected = int64(n) * int64(res.Published)

	drainEnd := time.Now().Add(15 * time.Second)
	for delivered.Load() < res.Expected && time.Now().Before(drainEnd) {
		time.Sleep(10 * time.Millisecond)
	}
	res.Wall = time.Since(start).Seconds()
	res.NodeCPU, res.RedisCPU = cpuOf(pids)-cpu0, cpuOf([]int{redisPID})-rcpu0

	// Close the subscribers: their state is ours once the readers ended.
	var lastRecv int64
	for _, s := range subs {
		s.conn.Close()
		<-s.done
		lastRecv = max(lastRecv, s.lastRecv)
		res.Duplicates += s.dups
		res.OrderViolations += s.order
		for w := range words {
			res.Missing += int64(bits.OnesCount64(acked[w] &^ s.seen[w]))
		}
	}
	subs = nil
	res.Delivered = delivered.Load()
	res.Latency = hist.Summary()
	if lastRecv > 0 {
		res.DeliveriesPerSec = float64(res.Delivered) / (float64(lastRecv-start.UnixNano()) / 1e9)
	}
	return res
}

// read records the events of the run until the connection closes.
func (s *benchSub) read(t *testing.T, hist *bench.Hist, delivered *atomic.Int64) {
	defer close(s.done)
	for {
		_, msg, err := s.conn.ReadMessage()
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		seq, ok1 := jsonInt(msg, `"bench_seq":`)
		ts, ok2 := jsonInt(msg, `"bench_t":`)
		id, ok3 := jsonString(msg, `"id":"`)
		if !ok1 || !ok2 || !ok3 {
			continue // a control message
		}
		if eid, err := parseEventID(id); err == nil {
			if s.haveLast && !s.lastID.less(eid) {
				s.order++
			}
			s.lastID, s.haveLast = eid, true
		}
		if seq < 0 {
			s.barrier.Store(true)
			continue
		}
		w, bit := seq>>6, uint64(1)<<(seq&63)
		if int(w) >= len(s.seen) {
			continue
		}
		if s.seen[w]&bit != 0 {
			s.dups++
			continue
		}
		s.seen[w] |= bit
		s.lastRecv = now
		delivered.Add(1)
		hist.Record(now - ts)
	}
}

func jsonInt(msg []byte, key string) (int64, bool) {
	i := bytes.Index(msg, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := msg[i+len(key):]
	j := 0
	for j < len(rest) && (rest[j] == '-' || rest[j] >= '0' && rest[j] <= '9') {
		j++
	}
	v, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	return v, err == nil
}

func jsonString(msg []byte, key string) (string, bool) {
	i := bytes.Index(msg, []byte(key))
	if i < 0 {
		return "", false
	}
	rest := msg[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return "", false
	}
	return string(rest[:j]), true
}

func parseEventID(s string) (eventID, error) {
	a, b, ok := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return eventID{}, fmt.Errorf("bad id %q", s)
	}
	return eventID{ms, seq}, nil
}

func nodePIDs(c *cluster) []int {
	var out []int
	for _, nd := range c.nodes {
		nd.mu.Lock()
		out = append(out, nd.cmd.Process.Pid)
		nd.mu.Unlock()
	}
	return out
}

// cpuOf sums the CPU seconds (user + system) of the processes.
func cpuOf(pids []int) float64 {
	var sum float64
	for _, p := range pids {
		if p <= 0 {
			continue
		}
		if s, err := bench.ProcCPU(p); err == nil {
			sum += s
		}
	}
	return sum
}
