package cli

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const publishSummary = `
Usage: knowledgehub publish --type TYPE [--data JSON] [flags]
       knowledgehub publish --file events.ndjson [flags]

Publishes events with POST /api/realtime/events and prints the id the server
assigned. With --file, publishes a file of events, one JSON object per line
({"type":..., "data":..., "user_id":..., "job_id":...}; blank lines are
skipped; "-" reads standard input) in batches, and prints the count and the
last id. Each batch carries an Idempotency-Key derived from the file content
and its line range, so running the same command again after a failure does
not publish any batch twice. --type, --user and --job then give defaults for
lines that lack those fields.

The server is --server, else $KNOWLEDGEHUB_URL, else the url recorded in the
development credentials of the data directory, else http://127.0.0.1:3000.
The key is --key, else $KNOWLEDGEHUB_PUBLISH_KEY, else the first of
$KNOWLEDGEHUB_PUBLISH_KEYS, else the development credentials.

Exit status: 0 published, 1 refused by the server or not reachable (the
server's message is printed), 2 bad command line.
`

const publishExamples = `
  knowledgehub publish --type CODE_CHANGE --data '{"file":"a.go","lines":12}'
  knowledgehub publish --type ERROR_OCCURRED --data '"disk full"' --user alice --job job-42
  knowledgehub publish --file events.ndjson --batch 500
  knowledgehub publish --server https://rt.example.com --key "$KEY" --type MEMORY_CREATED --data '{}'
  generate-events | knowledgehub publish --file - --ids
`

// maxBatchBytes bounds the body of one batch, well below the server's
// default max_body_bytes (4 MiB); a batch ends early rather than exceed it.
const maxBatchBytes = 1 << 20

// APIError is an error answer of the server: the HTTP status and the JSON
// error body of SPEC §2–§4.
type APIError struct {
	Status     int
	Code       string // the "error" field, such as invalid_event
	Message    string // the "message" field
	RetryAfter time.Duration
}

// Error returns the status, the error code and the server's message.
func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if e.Code != "" {
		return fmt.Sprintf("server answered %d (%s): %s", e.Status, e.Code, msg)
	}
	return fmt.Sprintf("server answered %d: %s", e.Status, msg)
}

// readAPIError builds the APIError of a response that is not a success.
func readAPIError(resp *http.Response) *APIError {
	e := &APIError{Status: resp.StatusCode}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			e.RetryAfter = time.Duration(n) * time.Second
		}
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &body) == nil && (body.Error != "" || body.Message != "") {
		e.Code, e.Message = body.Error, body.Message
		return e
	}
	text := strings.TrimSpace(string(raw))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	if text == "" {
		text = http.StatusText(resp.StatusCode)
	}
	e.Message = text
	return e
}

// isDialError reports whether err happened before anything was sent: the
// server could not be reached at all.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// reachError explains a failed request to server; it wraps err.
func reachError(server string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return &netError{fmt.Sprintf("cannot reach the server at %s: %v (is \"knowledgehub serve\" running there? set --server or $KNOWLEDGEHUB_URL)", server, op.Err), err}
	}
	return fmt.Errorf("request to %s failed: %w", server, err)
}

// netError is a network error with a friendlier message.
type netError struct {
	msg string
	err error
}

func (e *netError) Error() string { return e.msg }
func (e *netError) Unwrap() error { return e.err }

// Publisher posts events to a server (SPEC §4).
type Publisher struct {
	Server string // base URL, such as http://127.0.0.1:3000
	Key    string // publish key
	Client *http.Client
	// Retries is how many times a request is repeated, with the same
	// Idempotency-Key, after 429, 502, 503, 504 or a lost answer.
	Retries int
	// RetryDelay is the first retry delay; it doubles up to 5 s. A
	// Retry-After answer wins. Zero means 500 ms.
	RetryDelay time.Duration
}

// Draft is one event to publish.
type Draft struct {
	Type   string          `json:"type"`
	Data   json.RawMessage `json:"data,omitempty"`
	UserID string          `json:"user_id,omitempty"`
	JobID  string          `json:"job_id,omitempty"`
}

// Publish publishes one event and returns its id. A random Idempotency-Key
// makes retries safe.
func (p *Publisher) Publish(ctx context.Context, d Draft) (string, error) {
	body, err := json.Marshal(d)
	if err != nil {
		return "", fmt.Errorf("encode event: %w", err)
	}
	var k [16]byte
	_, _ = crand.Read(k[:])
	ans, err := p.post(ctx, body, "khcli-"+hex.EncodeToString(k[:]))
	if err != nil {
		return "", err
	}
	if ans.ID == "" {
		return "", errors.New("server answered 201 without an id")
	}
	return ans.ID, nil
}

// answer is the body of a 201.
type answer struct {
	ID       string   `json:"id"`
	IDs      []string `json:"ids"`
	replayed bool
}

// post sends body, retrying as Retries says.
func (p *Publisher) post(ctx context.Context, body []byte, idemKey string) (answer, error) {
	delay := p.RetryDelay
	if delay <= 0 {
		delay = 500 * time.Millisecond
	}
	for attempt := 0; ; attempt++ {
		ans, err := p.postOnce(ctx, body, idemKey)
		if err == nil || attempt >= p.Retries || ctx.Err() != nil {
			return ans, err
		}
		wait := delay
		var apiErr *APIError
		switch {
		case errors.As(err, &apiErr):
			switch apiErr.Status {
			case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			default:
				return ans, err
			}
			if apiErr.RetryAfter > 0 {
				wait = min(apiErr.RetryAfter, 30*time.Second)
			}
		case isDialError(err):
			return ans, err // nothing was sent: the server is not there
		}
		select {
		case <-ctx.Done():
			return ans, err
		case <-time.After(wait):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (p *Publisher) postOnce(ctx context.Context, body []byte, idemKey string) (answer, error) {
	var ans answer
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Server+"/api/realtime/events", bytes.NewReader(body))
	if err != nil {
		return ans, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+p.Key)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	client := p.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return ans, reachError(p.Server, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return ans, readAPIError(resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&ans); err != nil {
		return ans, fmt.Errorf("server answered %d with a body that is not the expected JSON: %v", resp.StatusCode, err)
	}
	ans.replayed = resp.Header.Get("Idempotent-Replayed") == "true"
	return ans, nil
}

// FileOptions tune PublishFile.
type FileOptions struct {
	// Batch is the most events per request (default 100). A batch also ends
	// before its body would exceed 1 MiB.
	Batch int
	// Defaults fill in the type, user_id and job_id of lines that lack them.
	Defaults Draft
	// Name names the source in messages.
	Name string
	// KeepIDs keeps every id in FileResult.IDs.
	KeepIDs bool
	// Progress, when set, is called after each batch with the events
	// published so far and the total.
	Progress func(done, total int)
}

// FileResult is the outcome of PublishFile.
type FileResult struct {
	Events   int      // events published (or found already published)
	Replayed int      // of which the server had from an earlier run
	LastID   string   // id of the last event
	IDs      []string // every id, when FileOptions.KeepIDs
}

// PublishFile publishes the NDJSON events that open returns, in batches.
// open is called twice: once to validate every line and hash the content,
// then to publish. Each batch's Idempotency-Key is derived from that hash,
// the defaults and the batch's line range, so publishing the same content
// again publishes nothing twice. On error the result tells what was
// published before it.
func (p *Publisher) PublishFile(ctx context.Context, open func() (io.ReadCloser, error), o FileOptions) (FileResult, error) {
	var res FileResult
	if o.Batch <= 0 {
		o.Batch = 100
	}
	if o.Name == "" {
		o.Name = "input"
	}
	needDefaults := o.Defaults.Type != "" || o.Defaults.UserID != "" || o.Defaults.JobID != ""

	// Pass 1: validate, count, hash.
	h := sha256.New()
	fmt.Fprintf(h, "type=%q user=%q job=%q\n", o.Defaults.Type, o.Defaults.UserID, o.Defaults.JobID)
	total := 0
	err := scanFile(open, h, func(lineNo int, line []byte) error {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(line, &obj); err != nil {
			var typeErr *json.UnmarshalTypeError
			if errors.As(err, &typeErr) {
				return fmt.Errorf("%s line %d: want a JSON object (an event), got a JSON %s", o.Name, lineNo, typeErr.Value)
			}
			return fmt.Errorf("%s line %d: not valid JSON: %v", o.Name, lineNo, err)
		}
		if _, ok := obj["type"]; !ok && o.Defaults.Type == "" {
			return fmt.Errorf("%s line %d: the event has no \"type\" (add one, or give a default with --type)", o.Name, lineNo)
		}
		total++
		return nil
	})
	if err != nil {
		return res, err
	}
	if total == 0 {
		return res, fmt.Errorf("%s: no events (want one JSON event per line)", o.Name)
	}
	sum := hex.EncodeToString(h.Sum(nil))[:32]

	// Pass 2: publish.
	var (
		body     []byte
		lines    []int // line number of each event in the batch
		first    int
		lastLine int
	)
	flush := func() error {
		if len(lines) == 0 {
			return nil
		}
		body = append(body, ']')
		key := fmt.Sprintf("khcli-%s-%d-%d", sum, first, lastLine)
		ans, err := p.post(ctx, body, key)
		if err != nil {
			return batchError(o.Name, lines, err)
		}
		if len(ans.IDs) != len(lines) {
			return fmt.Errorf("%s lines %d-%d: server answered %d ids for %d events", o.Name, first, lastLine, len(ans.IDs), len(lines))
		}
		res.Events += len(lines)
		if ans.replayed {
			res.Replayed += len(lines)
		}
		res.LastID = ans.IDs[len(ans.IDs)-1]
		if o.KeepIDs {
			res.IDs = append(res.IDs, ans.IDs...)
		}
		if o.Progress != nil {
			o.Progress(res.Events, total)
		}
		body, lines = body[:0], lines[:0]
		return nil
	}
	err = scanFile(open, nil, func(lineNo int, line []byte) error {
		if needDefaults {
			var err error
			if line, err = withDefaults(line, o.Defaults); err != nil {
				return fmt.Errorf("%s line %d: %v", o.Name, lineNo, err)
			}
		}
		if len(lines) > 0 && (len(lines) >= o.Batch || len(body)+len(line)+2 > maxBatchBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(lines) == 0 {
			body = append(body[:0], '[')
			first = lineNo
		} else {
			body = append(body, ',')
		}
		body = append(body, line...)
		lines = append(lines, lineNo)
		lastLine = lineNo
		return nil
	})
	if err == nil {
		err = flush()
	}
	return res, err
}

// batchError names the line of a batch that the server refused: the server
// says "[3].type: ...", meaning the fourth event of the batch.
func batchError(name string, lines []int, err error) error {
	var apiErr *APIError
	if errors.As(err, &apiErr) && strings.HasPrefix(apiErr.Message, "[") {
		end := strings.Index(apiErr.Message, "]")
		if end > 1 {
			if i, convErr := strconv.Atoi(apiErr.Message[1:end]); convErr == nil && i >= 0 && i < len(lines) {
				return fmt.Errorf("%s line %d: %w", name, lines[i], err)
			}
		}
	}
	return fmt.Errorf("%s lines %d-%d: %w", name, lines[0], lines[len(lines)-1], err)
}

// withDefaults adds the default type, user_id and job_id to an event line
// that lacks them.
func withDefaults(line []byte, d Draft) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return nil, err
	}
	for k, v := range map[string]string{"type": d.Type, "user_id": d.UserID, "job_id": d.JobID} {
		if _, ok := obj[k]; !ok && v != "" {
			b, _ := json.Marshal(v)
			obj[k] = b
		}
	}
	return json.Marshal(obj)
}

// scanFile calls fn with every non-blank line (without its line ending) of
// the reader open returns, numbered from 1. When h is not nil every byte read
// is written to it.
func scanFile(open func() (io.ReadCloser, error), h io.Writer, fn func(lineNo int, line []byte) error) error {
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	var r io.Reader = rc
	if h != nil {
		r = io.TeeReader(rc, h)
	}
	br := bufio.NewReaderSize(r, 64<<10)
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if t := bytes.TrimSpace(line); len(t) > 0 {
				if ferr := fn(lineNo, t); ferr != nil {
					return ferr
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read line %d: %w", lineNo, err)
		}
	}
}

// progressBar draws "[#####.....] 120/250 events" on a terminal.
type progressBar struct {
	w     io.Writer
	last  time.Time
	drawn bool
}

func (p *progressBar) update(done, total int) {
	if done < total && time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	const width = 30
	filled := width * done / max(total, 1)
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d events %3d%%", strings.Repeat("#", filled), strings.Repeat(".", width-filled), done, total, 100*done/max(total, 1))
	p.drawn = true
}

func (p *progressBar) clear() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// RunPublish is the publish command.
func RunPublish(ctx context.Context, args []string, o IO) error {
	c := newCommand("publish", publishSummary, publishExamples)
	typ := c.fs.String("type", "", "event type, such as CODE_CHANGE (required without --file)")
	data := c.fs.String("data", "", "event data: any JSON value (default null)")
	user := c.fs.String("user", "", "user_id: makes the event private to that user")
	job := c.fs.String("job", "", "job_id: only subscribers of that job receive the event")
	file := c.fs.String("file", "", "publish the events of this NDJSON file (\"-\": standard input)")
	batch := c.fs.Int("batch", 100, "with --file: events per request")
	ids := c.fs.Bool("ids", false, "with --file: print every id, one per line, instead of the summary")
	noProgress := c.fs.Bool("no-progress", false, "with --file: no progress bar, even on a terminal")
	server := c.fs.String("server", "", "server URL (default: $KNOWLEDGEHUB_URL, else the dev credentials' url, else "+DefaultServer+")")
	key := c.fs.String("key", "", "publish key (default: $KNOWLEDGEHUB_PUBLISH_KEY, else first of $KNOWLEDGEHUB_PUBLISH_KEYS, else the dev credentials)")
	dir := c.fs.String("data-dir", "", "data directory holding dev-credentials.json (default: $KNOWLEDGEHUB_DATA_DIR or ./data)")
	timeout := c.fs.Duration("timeout", 30*time.Second, "time limit of each request")
	retries := c.fs.Int("retries", 3, "repeats of a request after 429, 503 or a lost answer (with the same Idempotency-Key)")
	if err := c.parse(args, o.Stdout); err != nil {
		return err
	}
	if *file == "" && *typ == "" {
		return usageError("--type is required, or --file (run \"knowledgehub publish --help\" for usage)")
	}
	if *file != "" && c.set("data") {
		return usageError("--data cannot be used with --file: each line of the file is an event")
	}
	if *file == "" && (c.set("batch") || c.set("ids") || c.set("no-progress")) {
		return usageError("--batch, --ids and --no-progress only apply with --file")
	}
	if *batch < 1 {
		return usageError("--batch must be at least 1")
	}
	if *retries < 0 || *timeout <= 0 {
		return usageError("--retries must be >= 0 and --timeout positive")
	}
	var raw json.RawMessage
	if *data != "" {
		if !json.Valid([]byte(*data)) {
			var v any
			err := json.Unmarshal([]byte(*data), &v)
			return usageError("--data is not valid JSON (%v); quote strings, e.g. --data '\"text\"'", err)
		}
		raw = json.RawMessage(*data)
	}
	d := dataDir(*dir, o)
	base, err := ResolveServer(*server, d, o)
	if err != nil {
		return err
	}
	k, err := ResolvePublishKey(*key, d, o)
	if err != nil {
		return err
	}
	p := &Publisher{Server: base, Key: k, Client: &http.Client{Timeout: *timeout}, Retries: *retries}
	draft := Draft{Type: *typ, Data: raw, UserID: *user, JobID: *job}

	if *file == "" {
		id, err := p.Publish(ctx, draft)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(o.Stdout, id)
		return err
	}

	open, name, err := opener(*file)
	if err != nil {
		return err
	}
	fo := FileOptions{Batch: *batch, Defaults: draft, Name: name, KeepIDs: *ids}
	var bar *progressBar
	if o.StderrTTY && !*noProgress {
		bar = &progressBar{w: o.Stderr}
		fo.Progress = bar.update
	}
	res, err := p.PublishFile(ctx, open, fo)
	if bar != nil {
		bar.clear()
	}
	if err != nil {
		if res.Events > 0 {
			fmt.Fprintf(o.Stderr, "publish: %d events were published before the failure (last id %s); running the same command again skips them\n", res.Events, res.LastID)
		}
		return err
	}
	summary := fmt.Sprintf("published %d events; last id %s", res.Events, res.LastID)
	if res.Replayed > 0 {
		summary += fmt.Sprintf(" (%d of them were already published by an earlier run)", res.Replayed)
	}
	if *ids {
		for _, id := range res.IDs {
			if _, err := fmt.Fprintln(o.Stdout, id); err != nil {
				return err
			}
		}
		fmt.Fprintln(o.Stderr, summary)
		return nil
	}
	_, err = fmt.Fprintln(o.Stdout, summary)
	return err
}

// opener returns how to open the --file argument; "-" reads standard input
// once into memory so that it can be read twice.
func opener(path string) (func() (io.ReadCloser, error), string, error) {
	if path == "-" {
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, "", fmt.Errorf("read standard input: %w", err)
		}
		return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, "stdin", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	_ = f.Close()
	return func() (io.ReadCloser, error) { return os.Open(path) }, path, nil
}
