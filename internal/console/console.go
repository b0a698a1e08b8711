// Package console serves the gateway's live web console at "/": connection
// counts, a live event stream with filters, a publish form and an
// events-per-second chart.
//
// The console is three embedded files (index.html, console.js,
// console.css) in plain HTML, JavaScript and CSS, with no build step and no
// external resources: it works offline and under a strict Content Security
// Policy. It talks to the gateway through relative URLs
// (api/realtime/stats, api/realtime/stream, api/realtime/events), so it also
// works when the gateway is mounted under a path prefix.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Files returns the console's files (index.html, console.js, console.css)
// at the root of the returned file system.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // cannot happen: "static" is embedded
	}
	return sub
}

// contentSecurityPolicy allows only the console's own files and requests to
// its own origin.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

type asset struct {
	body        []byte
	contentType string
	etag        string
}

var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// Handler returns the handler of the console. It answers GET and HEAD for
// "/" (index.html), "/index.html", "/console.js" and "/console.css", 405
// for other methods on those paths, and 404 for every other path. Mount it
// at "/" (or under a prefix with http.StripPrefix).
func Handler() http.Handler {
	assets := make(map[string]*asset)
	files := Files()
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		panic(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		body, err := fs.ReadFile(files, e.Name())
		if err != nil {
			panic(err)
		}
		ct, ok := contentTypes[path.Ext(e.Name())]
		if !ok {
			continue
		}
		sum := sha256.Sum256(body)
		assets["/"+e.Name()] = &asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	assets["/"] = assets["/index.html"]

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if p == "" {
			p = "/"
		}
		a, ok := assets[p]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", a.contentType)
		h.Set("ETag", a.etag)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		if strings.HasPrefix(a.contentType, "text/html") {
			h.Set("Content-Security-Policy", contentSecurityPolicy)
			h.Set("Referrer-Policy", "no-referrer")
			h.Set("X-Frame-Options", "DENY")
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	})
}
