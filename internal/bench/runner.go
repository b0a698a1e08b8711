package bench

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/auth"
)

// Run runs cfg.Scenario. progress gets the status line (nil: none). The
// Result is returned even when the run stopped early (timeout, Ctrl-C),
// with what was measured so far and the reason among its Problems; err is
// for runs that could not start (bad configuration, unreachable server).
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	switch cfg.Scenario {
	case "idle":
		return Idle(ctx, cfg, progress)
	case "fanout":
		return Fanout(ctx, cfg, progress)
	case "publish":
		return Publish(ctx, cfg, progress)
	case "resume":
		return Resume(ctx, cfg, progress)
	}
	return nil, fmt.Errorf("unknown scenario %q: want one of %s", cfg.Scenario, strings.Join(Scenarios, ", "))
}

// runner is the state shared by the phases of one run.
type runner struct {
	cfg      Config
	res      *Result
	ctx      context.Context // bounded by cfg.Timeout
	cancel   context.CancelFunc
	hostPort string
	baseURL  string // http://host:port[/prefix]
	wsURL    string
	ssePath  string
	sources  []net.Addr // nil entry: the kernel picks
	wsDialer []*websocket.Dialer
	http     *http.Client
	pid      int // server, 0 unknown

	// The /metrics series of the server's connection count and of its
	// deliveries (see centrifugo.go).
	connMetric      string
	deliveredMetric string

	run   string // random id of this run, in every event it publishes
	tag   []byte // `"bench_run":"<run>"`
	pad   string
	token string // shared token, when TokenUser has no %d

	alive    atomic.Int64 // connections with a running reader
	foreign  atomic.Int64
	barriers atomic.Int64 // connections that saw a barrier event
	readers  sync.WaitGroup
	closes   counter
	controls counter

	status   atomic.Pointer[func() string]
	progress io.Writer
	stopProg chan struct{}
	progDone chan struct{}
}

// wsWriteBufferPool is shared by every WebSocket: the bench only writes
// close frames, so no connection keeps a write buffer.
var wsWriteBufferPool = &sync.Pool{}

func newRunner(ctx context.Context, cfg Config, progress io.Writer) (*runner, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hostPort, serverIP, _ := serverAddr(cfg.Server)
	u, _ := url.Parse(cfg.Server)
	prefix := strings.TrimRight(u.Path, "/")
	r := &runner{
		cfg:      cfg,
		hostPort: hostPort,
		baseURL:  "http://" + hostPort + prefix,
		wsURL:    "ws://" + hostPort + prefix + "/ws/notifications",
		ssePath:  prefix + "/api/realtime/stream",
		progress: progress,
		res: &Result{
			Scenario: cfg.Scenario, Target: cfg.Target, Server: cfg.Server, Transport: cfg.Transport, N: cfg.N,
			Started: time.Now(), Bench: BenchProcess{PID: os.Getpid()},
		},
		connMetric:      khConnectionsMetric,
		deliveredMetric: khDeliveredMetric,
	}
	if cfg.Target == TargetCentrifugo {
		r.wsURL = cfWSURL(hostPort, prefix)
		r.ssePath = ""
		r.connMetric, r.deliveredMetric = cfConnectionsMetric, cfDeliveredMetric
		r.res.Channel = cfg.Channel
	}
	if cfg.Scenario == "publish" {
		r.res.Transport, r.res.N = "", 0
	}

	// Descriptors: raise the soft limit, and refuse what cannot fit.
	maxFiles, err := RaiseNoFile()
	if err != nil {
		r.res.note("could not raise the open-file limit: %v", err)
	}
	r.res.Bench.MaxFiles = maxFiles
	if cfg.Scenario != "publish" {
		need := cfg.N + cfg.Concurrency + 32
		avail := int(maxFiles) - openFiles()
		if maxFiles > 0 && need > avail {
			per := int(maxFiles) - openFiles() - cfg.Concurrency - 32
			return nil, fmt.Errorf("--n %d needs about %d descriptors but this process can open only %d more (open-file limit %d, the hard limit): run several bench processes, each with --n %d or less and its own --source-addrs (e.g. 127.0.0.2, 127.0.0.3, ...)",
				cfg.N, need, avail, maxFiles, max(per, 0))
		}
	}

	for _, a := range cfg.sources(serverIP) {
		r.sources = append(r.sources, &net.TCPAddr{IP: a.AsSlice()})
	}
	if len(r.sources) == 0 {
		r.sources = []net.Addr{nil}
	} else {
		r.res.note("source addresses: %s", describeSources(r.sources))
	}
	for _, src := range r.sources {
		nd := &net.Dialer{LocalAddr: src}
		r.wsDialer = append(r.wsDialer, &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: cfg.ConnectTimeout,
			ReadBufferSize:   readBufferSize,
			WriteBufferSize:  512,
			WriteBufferPool:  wsWriteBufferPool,
		})
	}
	r.http = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        cfg.Concurrency + 8,
			MaxIdleConnsPerHost: cfg.Concurrency + 8,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		},
	}

	var id [4]byte
	_, _ = crand.Read(id[:])
	r.run = hex.EncodeToString(id[:])
	r.tag = []byte(`"bench_run":"` + r.run + `"`)
	r.pad = strings.Repeat("x", r.padLen())

	if cfg.TokenUser != "" && !strings.Contains(cfg.TokenUser, "%d") {
		if r.token, err = auth.MintWith(cfg.Secret, auth.MintOptions{Subject: cfg.TokenUser, TTL: cfg.TokenTTL}); err != nil {
			return nil, err
		}
	}

	switch {
	case cfg.ServerPID > 0:
		r.pid = cfg.ServerPID
		if _, err := ProcRSS(r.pid); err != nil {
			return nil, fmt.Errorf("--server-pid %d: %v", r.pid, err)
		}
	case cfg.ServerPID == 0:
		port, _ := strconv.Atoi(u.Port())
		if port == 0 {
			port = 80
		}
		if pid, err := PidListeningOn(port); err == nil {
			r.pid = pid
		} else {
			r.res.note("server process not found (%v): no RSS or CPU from /proc", err)
		}
	}

	r.ctx, r.cancel = context.WithTimeout(ctx, cfg.Timeout)
	// Reachable at all?
	if err := r.ping(); err != nil {
		r.cancel()
		return nil, err
	}
	r.startProgress()
	return r, nil
}

func describeSources(s []net.Addr) string {
	if len(s) <= 4 {
		parts := make([]string, len(s))
		for i, a := range s {
			parts[i] = a.(*net.TCPAddr).IP.String()
		}
		return strings.Join(parts, ", ")
	}
	return fmt.Sprintf("%s .. %s (%d)", s[0].(*net.TCPAddr).IP, s[len(s)-1].(*net.TCPAddr).IP, len(s))
}

// ping checks the server answers /healthz (Centrifugo: /api/info).
func (r *runner) ping() error {
	if r.cfg.Target == TargetCentrifugo {
		return r.cfPing()
	}
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.baseURL+"/healthz", nil)
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("server %s not reachable: %v", r.cfg.Server, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("server %s: /healthz answered %s", r.cfg.Server, resp.Status)
	}
	return nil
}

// finish stops the progress line, closes what is left and fills the
// common parts of the result.
func (r *runner) finish(clients []*client) *Result {
	r.closeAll(clients)
	r.stopProgress()
	r.cancel()
	res := r.res
	res.Seconds = time.Since(res.Started).Seconds()
	res.ClosedByServer = r.closes.snapshot()
	res.Controls = r.controls.snapshot()
	res.ForeignEvents = r.foreign.Load()
	if cpu, err := ProcCPU(os.Getpid()); err == nil {
		res.Bench.CPUSeconds = cpu
	}
	if rss, err := ProcRSS(os.Getpid()); err == nil {
		res.Bench.RSSBytes = rss
	}
	res.OK = len(res.Problems) == 0
	r.http.CloseIdleConnections()
	return res
}

// stopped records why the run ended early, if it did; true if it did.
func (r *runner) stopped(phase string) bool {
	if err := r.ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			r.res.problem("stopped by --timeout %s during %s", r.cfg.Timeout, phase)
		} else {
			r.res.problem("interrupted during %s", phase)
		}
		return true
	}
	return false
}

// sleep waits d or until the run is stopped; false if stopped.
func (r *runner) sleep(d time.Duration) bool {
	if d <= 0 {
		return r.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.ctx.Done():
		return false
	}
}

func (r *runner) kindOf(i int) transportKind {
	switch r.cfg.Transport {
	case "sse":
		return kindSSE
	case "both":
		if i%2 == 1 {
			return kindSSE
		}
	}
	return kindWS
}

func (r *runner) tokenFor(i int) (string, error) {
	if r.cfg.TokenUser == "" {
		return "", nil
	}
	if r.token != "" {
		return r.token, nil
	}
	return auth.MintWith(r.cfg.Secret, auth.MintOptions{Subject: fmt.Sprintf(r.cfg.TokenUser, i), TTL: r.cfg.TokenTTL})
}

func (r *runner) countClose(reason string) { r.closes.add(reason, 1) }
func (r *runner) countControl(typ string)  { r.controls.add(typ, 1) }

// connectAll opens n connections, ConnectConcurrency at a time, each
// reading with h once welcomed. lastID gives each one's last_event_id
// (nil: none). Failed connections are nil in the slice.
func (r *runner) connectAll(n int, h handler, lastID func(i int) string, label string) ([]*client, *ConnectStats) {
	cfg := r.cfg
	clients := make([]*client, n)
	st := &ConnectStats{Attempted: n}
	var (
		next, welcomed, failed, retries atomic.Int64
		lastWelcome                     atomic.Int64
		refusals                        counter
		hist                            Hist
		wg                              sync.WaitGroup
	)
	start := time.Now()
	var interval time.Duration
	if cfg.ConnectRate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.ConnectRate)
	}
	r.setStatus(func() string {
		w := welcomed.Load()
		el := time.Since(start).Seconds()
		return fmt.Sprintf("%s: %d/%d welcomed, %d failed, %d retries, %.0f conn/s", label, w, n, failed.Load(), retries.Load(), float64(w)/max(el, 1e-9))
	})
	workers := min(cfg.ConnectConcurrency, n)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || r.ctx.Err() != nil {
					return
				}
				if interval > 0 && !r.sleep(time.Until(start.Add(time.Duration(i)*interval))) {
					return
				}
				p := dialParams{}
				if lastID != nil {
					p.lastEventID = lastID(i)
				}
				var err error
				if p.token, err = r.tokenFor(i); err != nil {
					refusals.add("mint token: "+err.Error(), 1)
					failed.Add(1)
					continue
				}
				for attempt := 1; ; attempt++ {
					t0 := time.Now()
					c, err := r.dial(r.ctx, i, r.kindOf(i), p)
					if err == nil {
						hist.Record(c.welcomedAt - t0.UnixNano())
						for {
							lw := lastWelcome.Load()
							if c.welcomedAt <= lw || lastWelcome.CompareAndSwap(lw, c.welcomedAt) {
								break
							}
						}
						c.h = h
						c.dialStart = t0.UnixNano()
						clients[i] = c
						r.alive.Add(1)
						r.readers.Add(1)
						go c.read()
						welcomed.Add(1)
						break
					}
					refusals.add(errKey(err), 1)
					if attempt >= cfg.ConnectAttempts || r.ctx.Err() != nil {
						failed.Add(1)
						break
					}
					retries.Add(1)
					wait := time.Duration(attempt) * 100 * time.Millisecond
					var ce *connError
					if errors.As(err, &ce) && ce.RetryAfter > 0 {
						wait = min(ce.RetryAfter, 5*time.Second)
					}
					wait += time.Duration(rand.Int64N(int64(wait)/4 + 1))
					if !r.sleep(wait) {
						failed.Add(1)
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	st.Welcomed = int(welcomed.Load())
	st.Failed = n - st.Welcomed
	st.Retries = int(retries.Load())
	if lw := lastWelcome.Load(); lw > 0 {
		st.Seconds = float64(lw-start.UnixNano()) / 1e9
		if st.Seconds > 0 {
			st.RatePerSec = float64(st.Welcomed) / st.Seconds
		}
	}
	st.Latency = hist.Summary()
	st.Refusals = refusals.snapshot()
	if st.Welcomed < n {
		r.res.problem("%s: only %d of %d connections welcomed", label, st.Welcomed, n)
	}
	for k := range st.Refusals {
		if strings.HasPrefix(k, "429") {
			r.res.note("the server's connection limits refused some attempts (%s): run it with --connect-rate-per-ip 0 --connect-rate-per-user 0 --max-connections-per-ip 0 --max-connections-per-user 0 and a --max-connections above N for load tests", k)
			break
		}
	}
	return clients, st
}

// errKey names a dial error for counting.
func errKey(err error) string {
	var ce *connError
	switch {
	case errors.As(err, &ce):
		return ce.key()
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "EADDRNOTAVAIL: out of source ports (use more --source-addrs)"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too many open files"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, websocket.ErrBadHandshake):
		return "bad websocket handshake"
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// closeAll closes the connections from the client side and waits for their
// readers.
func (r *runner) closeAll(clients []*client) {
	for _, c := range clients {
		if c != nil {
			c.close()
		}
	}
	done := make(chan struct{})
	go func() { r.readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		r.res.note("some connection readers did not end within 10s of closing")
	}
}

// sample is the server's memory and a few gauges at one moment.
type sample struct {
	rss     int64
	metrics Metrics
}

func (r *runner) sample() sample {
	var s sample
	if r.pid > 0 {
		s.rss, _ = ProcRSS(r.pid)
	}
	m, err := ScrapeMetrics(r.ctx, r.http, r.baseURL+"/metrics")
	if err == nil {
		s.metrics = m
	}
	return s
}

func (r *runner) cpu() float64 {
	if r.pid <= 0 {
		return 0
	}
	v, _ := ProcCPU(r.pid)
	return v
}

// ---- publishing ----

// padLen sizes the pad field so that an event's JSON is about EventSize.
func (r *runner) padLen() int {
	sample := fmt.Sprintf(`{"id":"1733325600123-0","type":%q,"data":{"bench_run":"%s","bench_seq":1000,"bench_t":1733325600123456789,"pad":""}`, r.cfg.EventType, "00000000")
	if r.cfg.JobID != "" {
		sample += fmt.Sprintf(`,"job_id":%q`, r.cfg.JobID)
	}
	sample += `,"timestamp":"2026-12-04T15:20:00.123Z"}`
	return max(0, r.cfg.EventSize-len(sample))
}

// appendEvent appends one event to publish.
func (r *runner) appendEvent(b []byte, seq int64, t int64) []byte {
	b = append(b, `{"type":`...)
	b = strconv.AppendQuote(b, r.cfg.EventType)
	b = append(b, `,"data":{`...)
	b = append(b, r.tag...)
	b = append(b, `,"bench_seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, `,"bench_t":`...)
	b = strconv.AppendInt(b, t, 10)
	b = append(b, `,"pad":"`...)
	b = append(b, r.pad...)
	b = append(b, `"}`...)
	if r.cfg.JobID != "" {
		b = append(b, `,"job_id":`...)
		b = strconv.AppendQuote(b, r.cfg.JobID)
	}
	return append(b, '}')
}

// body is a publish request of count events from seq on; a single event
// is sent as an object, more as a batch. Centrifugo: see cfBody.
func (r *runner) body(seq int64, count int) []byte {
	if r.cfg.Target == TargetCentrifugo {
		return r.cfBody(seq, count)
	}
	t := time.Now().UnixNano()
	b := make([]byte, 0, count*(r.cfg.EventSize+16)+2)
	if count == 1 {
		return r.appendEvent(b, seq, t)
	}
	b = append(b, '[')
	for k := range count {
		if k > 0 {
			b = append(b, ',')
		}
		s := seq + int64(k)
		if seq < 0 {
			s = seq
		}
		b = r.appendEvent(b, s, t)
	}
	return append(b, ']')
}

// apiError is a refused publish.
type apiError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
}

func (e *apiError) Error() string {
	return fmt.Sprintf("publish answered %d %s: %s", e.Status, e.Code, e.Message)
}

func (e *apiError) key() string {
	if e.Code == "" {
		return strconv.Itoa(e.Status)
	}
	return strconv.Itoa(e.Status) + " " + e.Code
}

// publish posts body, retrying network errors, 429 and 503 with the same
// Idempotency-Key so that no event is published twice. It returns the ids
// (Centrifugo: the offsets, "" without history).
func (r *runner) publish(body []byte) ([]string, error) {
	key := r.run + "-" + strconv.FormatUint(rand.Uint64(), 36)
	var lastErr error
	for attempt := 1; attempt <= 4; attempt++ {
		ids, err := r.publishOnce(body, key)
		if err == nil {
			return ids, nil
		}
		lastErr = err
		wait := time.Duration(attempt) * 200 * time.Millisecond
		var ae *apiError
		if errors.As(err, &ae) {
			if ae.Status != http.StatusTooManyRequests && ae.Status != http.StatusServiceUnavailable {
				return nil, err
			}
			if ae.RetryAfter > 0 {
				wait = min(ae.RetryAfter, 2*time.Second)
			}
		}
		if r.ctx.Err() != nil || !r.sleep(wait) {
			break
		}
	}
	return nil, lastErr
}

func (r *runner) publishOnce(body []byte, idemKey string) ([]string, error) {
	if r.cfg.Target == TargetCentrifugo {
		return r.cfPublishOnce(body) // the idempotency keys are in the body
	}
	req, err := http.NewRequestWithContext(r.ctx, http.MethodPost, r.baseURL+"/api/realtime/events", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.cfg.PublishKey)
	req.Header.Set("Idempotency-Key", idemKey)
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusCreated {
		e := &apiError{Status: resp.StatusCode}
		var b struct{ Error, Message string }
		if json.Unmarshal(raw, &b) == nil {
			e.Code, e.Message = b.Error, b.Message
		}
		if s := resp.Header.Get("Retry-After"); s != "" {
			if n, err := strconv.Atoi(s); err == nil {
				e.RetryAfter = time.Duration(n) * time.Second
			}
		}
		return nil, e
	}
	var out struct {
		ID  string   `json:"id"`
		IDs []string `json:"ids"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("publish answer: %v", err)
	}
	if out.ID != "" {
		return []string{out.ID}, nil
	}
	return out.IDs, nil
}

// barrier publishes marker events (bench_seq -1) every 250 ms until every
// live connection has received one: after that, each connection is
// attached to the hub and receives everything published later.
func (r *runner) barrier(label string) bool {
	start := time.Now()
	r.setStatus(func() string {
		return fmt.Sprintf("%s: %d/%d connections saw the barrier", label, r.barriers.Load(), r.alive.Load())
	})
	deadline := time.Now().Add(max(r.cfg.Drain, 5*time.Second))
	for {
		if _, err := r.publish(r.body(-1, 1)); err != nil {
			r.res.problem("%s: publishing the barrier event: %v", label, err)
			return false
		}
		wait := time.Now().Add(250 * time.Millisecond)
		for time.Now().Before(wait) {
			if r.barriers.Load() >= r.alive.Load() {
				_ = start
				return true
			}
			if !r.sleep(5 * time.Millisecond) {
				return false
			}
		}
		if time.Now().After(deadline) {
			r.res.problem("%s: only %d of %d connections received the barrier event within %s", label, r.barriers.Load(), r.alive.Load(), time.Since(start).Round(time.Millisecond))
			return false
		}
	}
}

// ---- progress ----

func (r *runner) setStatus(f func() string) { r.status.Store(&f) }

func (r *runner) startProgress() {
	if r.progress == nil {
		return
	}
	r.stopProg = make(chan struct{})
	r.progDone = make(chan struct{})
	every := time.Second
	if !r.cfg.ProgressTTY {
		every = 10 * time.Second
	}
	go func() {
		defer close(r.progDone)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-r.stopProg:
				if r.cfg.ProgressTTY {
					fmt.Fprint(r.progress, "\r\x1b[K")
				}
				return
			case <-t.C:
				f := r.status.Load()
				if f == nil {
					continue
				}
				line := fmt.Sprintf("[%5.1fs] %s", time.Since(r.res.Started).Seconds(), (*f)())
				if r.cfg.ProgressTTY {
					fmt.Fprint(r.progress, "\r\x1b[K"+line)
				} else {
					fmt.Fprintln(r.progress, line)
				}
			}
		}
	}()
}

func (r *runner) stopProgress() {
	if r.stopProg == nil {
		return
	}
	close(r.stopProg)
	<-r.progDone
	r.stopProg = nil
}
