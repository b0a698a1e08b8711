package console

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, target string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestServesAssets(t *testing.T) {
	h := Handler()
	for _, c := range []struct {
		path, contentType, contains string
	}{
		{"/", "text/html; charset=utf-8", "<title>KnowledgeHub Realtime</title>"},
		{"/index.html", "text/html; charset=utf-8", `id="event-list"`},
		{"/console.js", "text/javascript; charset=utf-8", "api/realtime/stream"},
		{"/console.css", "text/css; charset=utf-8", ".event-row"},
	} {
		resp, body := get(t, h, http.MethodGet, c.path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d", c.path, resp.StatusCode)
			continue
		}
		if ct := resp.Header.Get("Content-Type"); ct != c.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", c.path, ct, c.contentType)
		}
		if !strings.Contains(body, c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", c.path)
		}
		if resp.Header.Get("ETag") == "" {
			t.Errorf("GET %s: no ETag", c.path)
		}
	}
	resp, _ := get(t, h, http.MethodGet, "/", nil)
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("index CSP = %q", csp)
	}
}

func TestNotFoundAndMethods(t *testing.T) {
	h := Handler()
	for _, p := range []string{"/nope", "/static/console.js", "/console.js/", "/api/realtime/stats", "/index.htm", "/.."} {
		if resp, _ := get(t, h, http.MethodGet, p, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", p, resp.StatusCode)
		}
	}
	resp, _ := get(t, h, http.MethodPost, "/", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: status %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	resp, body := get(t, h, http.MethodHead, "/console.css", nil)
	if resp.StatusCode != http.StatusOK || body != "" {
		t.Errorf("HEAD /console.css: status %d, %d bytes of body", resp.StatusCode, len(body))
	}
}

func TestConditionalGet(t *testing.T) {
	h := Handler()
	resp, _ := get(t, h, http.MethodGet, "/console.js", nil)
	etag := resp.Header.Get("ETag")
	resp, _ = get(t, h, http.MethodGet, "/console.js", map[string]string{"If-None-Match": etag})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: status %d, want 304", resp.StatusCode)
	}
}

func allFiles(t *testing.T) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := fs.WalkDir(Files(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(Files(), p)
		files[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestOnlyLocalAssets(t *testing.T) {
	files := allFiles(t)
	for _, want := range []string{"index.html", "console.js", "console.css"} {
		if _, ok := files[want]; !ok {
			t.Errorf("%s is not embedded", want)
		}
	}
	absURL := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|https?://`)
	total := 0
	for name, text := range files {
		total += len(text)
		// Strip JavaScript line comments, which may contain "//" but never
		// load anything; URLs in code would still be caught.
		scan := text
		if strings.HasSuffix(name, ".js") {
			scan = regexp.MustCompile(`(?m)^\s*//.*$`).ReplaceAllString(text, "")
		}
		if m := absURL.FindString(scan); m != "" {
			t.Errorf("%s references an external URL: %q", name, m)
		}
		for _, bad := range []string{"@import", "fonts.googleapis", "cdn", "unpkg"} {
			if strings.Contains(strings.ToLower(scan), strings.ToLower(bad)) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
	}
	if total >= 60*1024 {
		t.Errorf("console is %d bytes, want < 60 KiB", total)
	}

	// Every src= and href= in the HTML names an embedded file.
	html := files["index.html"]
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(html, -1) {
		if m[1] == "data:," { // the empty favicon, so browsers do not ask for one
			continue
		}
		if _, ok := files[m[1]]; !ok {
			t.Errorf("index.html references %q, which is not an embedded file", m[1])
		}
	}
	if !strings.Contains(html, `src="console.js"`) || !strings.Contains(html, `href="console.css"`) {
		t.Error("index.html does not load console.js and console.css")
	}
	if regexp.MustCompile(`<script>|<script [^>]*>[^<]|style="`).MatchString(html) {
		t.Error("index.html has inline script or style, which the CSP forbids")
	}
}

// TestElementIDs checks the ids the browser tests rely on.
func TestElementIDs(t *testing.T) {
	files := allFiles(t)
	html, js := files["index.html"], files["console.js"]
	for _, id := range []string{
		"conn-total", "conn-websocket", "conn-sse", "conn-auth", "conn-anon",
		"events-accepted", "events-delivered", "event-list", "pause",
		"publish-form", "publish-key", "publish-type", "publish-data", "publish-user", "publish-job", "publish-result",
		"rate-chart", "filter-job", "stream-status",
	} {
		if n := strings.Count(html, `id="`+id+`"`); n != 1 {
			t.Errorf("index.html has %d elements with id %q, want 1", n, id)
		}
	}
	if !strings.Contains(html, `<canvas id="rate-chart"`) {
		t.Error("#rate-chart is not a canvas")
	}
	if !strings.Contains(html, `<select id="publish-type"`) {
		t.Error("#publish-type is not a select")
	}
	for _, s := range []string{
		"api/realtime/stats", "api/realtime/stream", "api/realtime/events",
		"event_types=", "job_ids=", "'connected'", "'gap'", "'token_expired'",
		"event-row", "data-id", "data-type", "localStorage", "Bearer ", "MAX_ROWS = 500",
		"CODE_CHANGE", "MEMORY_CREATED", "DECISION_MADE", "ERROR_OCCURRED", "PATTERN_DETECTED",
	} {
		if !strings.Contains(js, s) {
			t.Errorf("console.js lacks %q", s)
		}
	}
}
