package origin

import (
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

func TestAllowed(t *testing.T) {
	standard := []string{
		"https://app.example.com",
		"https://*.example.com",
		"http://localhost:3000",
		"http://[::1]:3000",
		"https://*.staging.example.org:8443",
		"http://10.0.0.5:8080",
	}
	tests := []struct {
		name     string
		patterns []string
		origin   string
		want     bool
	}{
		// exact
		{"exact", standard, "https://app.example.com", true},
		{"exact explicit default port", standard, "https://app.example.com:443", true},
		{"exact leading zero default port", standard, "https://app.example.com:0443", true},
		{"exact upper case", standard, "HTTPS://APP.Example.COM", true},
		{"exact with port", standard, "http://localhost:3000", true},
		{"exact localhost upper case", standard, "http://LOCALHOST:3000", true},
		{"exact IPv6", standard, "http://[::1]:3000", true},
		{"exact IPv6 non-canonical", standard, "http://[0:0:0:0:0:0:0:1]:3000", true},
		{"exact IPv4 with port", standard, "http://10.0.0.5:8080", true},

		// wildcard
		{"wildcard one label", standard, "https://foo.example.com", true},
		{"wildcard two labels", standard, "https://a.b.example.com", true},
		{"wildcard upper case", standard, "https://Foo.EXAMPLE.com", true},
		{"wildcard default port explicit", standard, "https://foo.example.com:443", true},
		{"wildcard not apex", standard, "https://example.com", false},
		{"wildcard not suffix without dot", standard, "https://evilexample.com", false},
		{"wildcard other scheme", standard, "http://foo.example.com", false},
		{"wildcard other port", standard, "https://foo.example.com:8443", false},
		{"wildcard with port", standard, "https://x.staging.example.org:8443", true},
		{"wildcard with port, default port", standard, "https://x.staging.example.org", false},
		{"wildcard with port, apex", standard, "https://staging.example.org:8443", false},

		// attacks and malformed values
		{"suffix attack", standard, "https://example.com.evil.com", false},
		{"app suffix attack", standard, "https://app.example.com.evil.com", false},
		{"path smuggling", standard, "https://evil.com/https://app.example.com", false},
		{"userinfo", standard, "https://app.example.com@evil.com", false},
		{"userinfo wildcard", standard, "https://foo.example.com@evil.com", false},
		{"userinfo colon", standard, "https://app.example.com:443@evil.com", false},
		{"trailing slash", standard, "https://app.example.com/", false},
		{"path", standard, "https://app.example.com/x", false},
		{"query", standard, "https://app.example.com?x", false},
		{"fragment", standard, "https://app.example.com#x", false},
		{"backslash", standard, `https://evil.com\@app.example.com`, false},
		{"null", standard, "null", false},
		{"empty", standard, "", false},
		{"spaces", standard, " https://app.example.com", false},
		{"trailing space", standard, "https://app.example.com ", false},
		{"no scheme", standard, "app.example.com", false},
		{"scheme relative", standard, "//app.example.com", false},
		{"other scheme", standard, "http://app.example.com", false},
		{"ws scheme", standard, "wss://app.example.com", false},
		{"other port", standard, "https://app.example.com:8443", false},
		{"other port localhost", standard, "http://localhost:3001", false},
		{"localhost default port", standard, "http://localhost", false},
		{"empty port", standard, "https://app.example.com:", false},
		{"port out of range", standard, "http://localhost:65536", false},
		{"port with sign", standard, "http://localhost:+3000", false},
		{"trailing dot", standard, "https://app.example.com.", false},
		{"empty label", standard, "https://foo..example.com", false},
		{"percent-encoded", standard, "https://app%2eexample.com", false},
		{"non-ASCII", standard, "https://app.exаmple.com", false}, // Cyrillic а
		{"NUL", standard, "https://app.example.com\x00.evil.com", false},
		{"CRLF", standard, "https://app.example.com\r\nX: y", false},
		{"wildcard literal", standard, "https://*.example.com", false},
		{"IPv6 zone", standard, "http://[::1%25eth0]:3000", false},
		{"IPv6 unterminated", standard, "http://[::1:3000", false},
		{"IPv4 in brackets", standard, "http://[10.0.0.5]:8080", false},
		{"IPv4 octal", standard, "http://010.0.0.5:8080", false},
		{"numeric last label", standard, "https://1.example.123", false},
		{"too long label", standard, "https://" + strings.Repeat("a", 64) + ".example.com", false},

		// "*" and the empty list
		{"star allows", []string{"*"}, "https://anything.test", true},
		{"star allows null", []string{"*"}, "null", true},
		{"star allows malformed", []string{"*"}, "garbage", true},
		{"no patterns", nil, "https://app.example.com", false},
		{"only blanks", []string{"", "  "}, "http://localhost:3000", false},
		{"pattern trailing slash", []string{"https://app.example.com/"}, "https://app.example.com", true},
		{"pattern upper case and default port", []string{" HTTPS://App.Example.com:443 "}, "https://app.example.com", true},
		{"custom scheme", []string{"chrome-extension://abcdef"}, "chrome-extension://abcdef", true},
		{"wildcard localhost", []string{"http://*.localhost:3000"}, "http://app.localhost:3000", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.patterns)
			if err != nil {
				t.Fatalf("New(%q): %v", tt.patterns, err)
			}
			if got := c.Allowed(tt.origin); got != tt.want {
				t.Errorf("Allowed(%q) with %q = %v, want %v", tt.origin, tt.patterns, got, tt.want)
			}
		})
	}
}

func TestNewInvalid(t *testing.T) {
	for _, p := range []string{
		"app.example.com",
		"https://",
		"https://app.example.com/path",
		"https://app.example.com//",
		"https://user@app.example.com",
		"https://app.example.com:0",
		"https://app.example.com:99999",
		"https://app.example.com:",
		"https://a.*.example.com",
		"https://*example.com",
		"https://*",
		"https://*.com",
		"https://*.1.2.3.4",
		"*.example.com",
		"https://**.example.com",
		"null",
		"http://[::1",
		"http://[fe80::1%eth0]",
		"1https://x.example.com",
		"https://exämple.com",
		"https://app.example.com?x=1",
	} {
		_, err := New([]string{"https://ok.example.com", p})
		if err == nil {
			t.Errorf("New(%q): no error", p)
			continue
		}
		if !strings.Contains(err.Error(), "allowed_origins") || !strings.Contains(err.Error(), strconv.Quote(p)) {
			t.Errorf("New(%q): error %q does not name the setting and the pattern", p, err)
		}
	}
}

func TestDefault(t *testing.T) {
	for _, tt := range []struct {
		port string
		want string
	}{
		{"3000", "http://localhost:3000"},
		{":3000", "http://localhost:3000"},
		{"0.0.0.0:8080", "http://localhost:8080"},
		{"[::]:8080", "http://localhost:8080"},
		{"", "http://localhost"},
	} {
		d := Default(tt.port)
		if len(d) != 3 || d[0] != tt.want {
			t.Errorf("Default(%q) = %q, want first %q", tt.port, d, tt.want)
		}
		c, err := New(d)
		if err != nil {
			t.Fatalf("New(Default(%q)): %v", tt.port, err)
		}
		for _, o := range d {
			if !c.Allowed(o) {
				t.Errorf("Default(%q): %q not allowed", tt.port, o)
			}
		}
		if c.Allowed("https://evil.com") {
			t.Errorf("Default(%q) allows evil.com", tt.port)
		}
	}
	c, _ := New(Default("3000"))
	if !c.Allowed("http://[::1]:3000") || !c.Allowed("http://127.0.0.1:3000") {
		t.Error("loopback origins not allowed")
	}
	if c.Allowed("http://localhost:3001") || c.Allowed("https://localhost:3000") {
		t.Error("wrong port or scheme allowed")
	}
}

func TestNilChecker(t *testing.T) {
	var c *Checker
	if c.Allowed("https://app.example.com") || c.AllowsAll() {
		t.Error("nil Checker allows")
	}
	all, _ := New([]string{"https://a.example.com", "*"})
	if !all.AllowsAll() {
		t.Error("AllowsAll false with *")
	}
}

// oracle normalizes an origin with net/url, independently of parse: the
// lower-case scheme, host and port with the default port dropped, or ok =
// false when it is not a bare scheme://host[:port].
func oracle(s string) (key string, ok bool) {
	u, err := url.Parse(s)
	if err != nil || u.User != nil || u.Opaque != "" || u.Path != "" || u.RawPath != "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Host == "" {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.String()
		if a.Is6() {
			host = "[" + host + "]"
		}
	}
	port := u.Port()
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil {
			return "", false
		}
		port = strconv.Itoa(n)
		if defaultPorts[scheme] == port {
			port = ""
		}
	}
	if port == "" {
		return scheme + "://" + host, true
	}
	return scheme + "://" + host + ":" + port, true
}

func FuzzAllowed(f *testing.F) {
	patterns := []string{
		"https://app.example.com",
		"http://localhost:3000",
		"http://[::1]:3000",
		"http://127.0.0.1:3000",
		"wss://x.example.org:8443",
	}
	allowed := map[string]bool{}
	for _, p := range patterns {
		k, ok := oracle(p)
		if !ok {
			f.Fatalf("oracle(%q) failed", p)
		}
		allowed[k] = true
	}
	exact, err := New(patterns)
	if err != nil {
		f.Fatal(err)
	}
	wild, err := New([]string{"https://*.example.com", "http://*.localhost:3000"})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"https://app.example.com", "HTTPS://APP.EXAMPLE.COM:443", "http://localhost:3000",
		"http://[::1]:3000", "http://[0::1]:3000", "https://example.com.evil.com",
		"https://app.example.com@evil.com", "https://evil.com/https://app.example.com",
		"null", "", "https://foo.example.com", "http://a.localhost:3000", "wss://x.example.org:08443",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, o string) {
		if exact.Allowed(o) {
			k, ok := oracle(o)
			if !ok || !allowed[k] {
				t.Fatalf("Allowed(%q) = true, but it normalizes to %q (ok=%v), not an allowed origin", o, k, ok)
			}
		}
		if wild.Allowed(o) {
			k, ok := oracle(o)
			if !ok {
				t.Fatalf("wildcard Allowed(%q) = true for a malformed origin", o)
			}
			if !(strings.HasPrefix(k, "https://") && strings.HasSuffix(k, ".example.com")) &&
				!(strings.HasPrefix(k, "http://") && strings.HasSuffix(k, ".localhost:3000")) {
				t.Fatalf("wildcard Allowed(%q) = true, normalized %q", o, k)
			}
		}
		// A pattern built from the input must not panic either.
		if c, err := New([]string{o}); err == nil {
			c.Allowed(o)
		}
	})
}
