// Package origin decides whether a browser may open a WebSocket, from the
// Origin header it sends (the CSRF protection of the `allowed_origins`
// setting, SPEC §2 and §8).
//
// An origin is compared by scheme, host and port, case-insensitively, with
// the default port of the scheme made explicit-equal to no port
// (https://x:443 is https://x). Allowed patterns are:
//
//   - exact origins: "https://app.example.com", "http://localhost:3000",
//     "http://[::1]:3000";
//   - wildcard subdomains: "https://*.example.com" matches one or more labels
//     below example.com with the same scheme and port, but not example.com
//     itself, nor evilexample.com;
//   - "*": every origin, including "null" and malformed values.
//
// The Origin header of a browser is serialized as scheme://host[:port]
// (RFC 6454), so anything else (a path, even a single "/", userinfo, a
// query, whitespace, percent-encoding, non-ASCII) is rejected, as is the
// opaque origin "null" (sandboxed frames, file: pages, some redirects). A
// request without an Origin header is not a browser request and is not this
// package's business: the caller lets it through before asking Allowed.
package origin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Checker decides whether a browser Origin may open a WebSocket. It is
// immutable after New and safe for concurrent use. A nil Checker allows
// nothing.
type Checker struct {
	all   bool
	exact map[string]struct{}
	wild  []wildcard
}

// wildcard is a "scheme://*.suffix[:port]" pattern; suffix starts with '.'.
type wildcard struct {
	scheme, suffix, port string
}

// New compiles the allowed_origins patterns: exact origins, wildcard
// subdomain patterns ("https://*.example.com") and "*" (allow all).
// Surrounding whitespace is ignored, empty entries are skipped and a single
// trailing "/" is tolerated ("https://app.example.com/"). An invalid pattern
// is an error naming it and the setting. With no pattern, every origin is
// rejected.
func New(patterns []string) (*Checker, error) {
	c := &Checker{exact: make(map[string]struct{}, len(patterns))}
	for _, raw := range patterns {
		p := strings.TrimSpace(raw)
		if p == "" {
			continue
		}
		if p == "*" {
			c.all = true
			continue
		}
		o, wild, err := parse(p, true)
		if err != nil {
			return nil, fmt.Errorf("allowed_origins: invalid origin %q: %w", raw, err)
		}
		if wild {
			c.wild = append(c.wild, wildcard{scheme: o.scheme, suffix: o.host[1:], port: o.port})
			continue
		}
		c.exact[o.key()] = struct{}{}
	}
	return c, nil
}

// Allowed reports whether a browser sending this Origin header value may
// connect. Scheme, host and port are compared case-insensitively, with
// default ports normalized. "null", the empty string and malformed values
// are rejected, unless the Checker was built with "*".
func (c *Checker) Allowed(origin string) bool {
	if c == nil {
		return false
	}
	if c.all {
		return true
	}
	o, _, err := parse(origin, false)
	if err != nil {
		return false
	}
	if _, ok := c.exact[o.key()]; ok {
		return true
	}
	if o.ip {
		return false
	}
	for _, w := range c.wild {
		// host labels are never empty, so a host ending in ".example.com"
		// and longer than it has at least one label below example.com.
		if o.scheme == w.scheme && o.port == w.port &&
			len(o.host) > len(w.suffix) && strings.HasSuffix(o.host, w.suffix) {
			return true
		}
	}
	return false
}

// AllowsAll reports whether the Checker was built with "*".
func (c *Checker) AllowsAll() bool { return c != nil && c.all }

// Default returns the allowed_origins used when none are configured: the
// server's own http://localhost:<port>, http://127.0.0.1:<port> and
// http://[::1]:<port>. port may also be a listen address such as ":3000" or
// "0.0.0.0:3000", in which case its port is used; an empty port gives the
// origins without a port.
func Default(port string) []string {
	if _, p, err := net.SplitHostPort(port); err == nil {
		port = p
	} else if i := strings.LastIndexByte(port, ':'); i >= 0 {
		port = port[i+1:]
	}
	suffix := ""
	if port != "" {
		suffix = ":" + port
	}
	return []string{
		"http://localhost" + suffix,
		"http://127.0.0.1" + suffix,
		"http://[::1]" + suffix,
	}
}

// parsed is a normalized origin: lower-case scheme and host (IPv6 in
// brackets, canonical form), port in decimal without leading zeros, empty
// when it is the default port of the scheme.
type parsed struct {
	scheme, host, port string
	ip                 bool
}

func (o parsed) key() string {
	if o.port == "" {
		return o.scheme + "://" + o.host
	}
	return o.scheme + "://" + o.host + ":" + o.port
}

var defaultPorts = map[string]string{"http": "80", "https": "443", "ws": "80", "wss": "443"}

// parse parses an origin serialization. With pattern set, a trailing "/" is
// tolerated and a leading "*." label makes it a wildcard (reported by wild,
// with host starting with "*.").
func parse(s string, pattern bool) (o parsed, wild bool, err error) {
	if s == "null" {
		return o, false, errors.New(`"null" is the opaque origin of sandboxed or file: pages and cannot be allowed except by "*"`)
	}
	i := strings.Index(s, "://")
	if i < 0 {
		return o, false, errors.New(`want scheme://host[:port], such as "https://app.example.com"`)
	}
	scheme, rest := s[:i], s[i+3:]
	if !validScheme(scheme) {
		return o, false, errors.New("bad scheme")
	}
	o.scheme = strings.ToLower(scheme)
	if pattern {
		rest = strings.TrimSuffix(rest, "/")
	}

	host, port := rest, ""
	if strings.HasPrefix(rest, "[") {
		j := strings.IndexByte(rest, ']')
		if j < 0 {
			return o, false, errors.New("unterminated IPv6 address")
		}
		host = rest[1:j]
		after := rest[j+1:]
		if after != "" {
			if after[0] != ':' {
				return o, false, errors.New("only a port may follow the host (no path, query or userinfo)")
			}
			port = after[1:]
			if port == "" {
				return o, false, errors.New("empty port")
			}
		}
		a, perr := netip.ParseAddr(host)
		if perr != nil || !a.Is6() || a.Zone() != "" {
			return o, false, errors.New("bad IPv6 address")
		}
		o.host, o.ip = "["+a.String()+"]", true
	} else {
		if j := strings.IndexByte(rest, ':'); j >= 0 {
			host, port = rest[:j], rest[j+1:]
			if port == "" {
				return o, false, errors.New("empty port")
			}
		}
		if pattern && strings.HasPrefix(host, "*.") {
			wild = true
			host = host[2:]
		}
		if a, perr := netip.ParseAddr(host); perr == nil && a.Is4() {
			if wild {
				return o, false, errors.New("a wildcard needs a domain name, not an IP address")
			}
			o.host, o.ip = a.String(), true
		} else {
			h, herr := validHost(host)
			if herr != nil {
				return o, false, herr
			}
			if wild && !strings.Contains(h, ".") && h != "localhost" {
				return o, false, fmt.Errorf("wildcard *.%s is too broad: name a domain such as https://*.example.com", h)
			}
			o.host = h
		}
		if wild {
			o.host = "*." + o.host
		}
	}

	if port != "" {
		n, perr := parsePort(port)
		if perr != nil {
			return o, false, perr
		}
		o.port = strconv.Itoa(n)
		if defaultPorts[o.scheme] == o.port {
			o.port = ""
		}
	}
	return o, wild, nil
}

// validScheme reports whether s is an RFC 3986 scheme.
func validScheme(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// validHost checks a DNS name (ASCII; internationalized names arrive in
// their punycode form) and returns it in lower case. Labels are 1 to 63
// letters, digits, '-' or '_'; the last label is not all digits (that would
// be a malformed IPv4 address).
func validHost(h string) (string, error) {
	if h == "" {
		return "", errors.New("missing host")
	}
	if len(h) > 253 {
		return "", errors.New("host name too long")
	}
	label, digitsOnly := 0, true
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return "", errors.New("empty label in host name")
			}
			label, digitsOnly = 0, true
			continue
		case '0' <= c && c <= '9':
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '-', c == '_':
			digitsOnly = false
		case c == '*':
			return "", errors.New(`"*" is only allowed as the whole first label ("https://*.example.com") or alone`)
		case c == '/' || c == '?' || c == '#' || c == '@' || c == '\\':
			return "", errors.New("only a port may follow the host (no path, query or userinfo)")
		default:
			return "", fmt.Errorf("invalid character %q in host (internationalized names must be given in punycode)", c)
		}
		label++
		if label > 63 {
			return "", errors.New("host name label too long")
		}
	}
	if label == 0 {
		return "", errors.New("empty label in host name")
	}
	if digitsOnly {
		return "", errors.New("malformed IP address")
	}
	return strings.ToLower(h), nil
}

// parsePort parses a decimal port 1-65535.
func parsePort(p string) (int, error) {
	if len(p) > 5 {
		return 0, errors.New("bad port")
	}
	n := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return 0, errors.New("bad port (only a port may follow the host: no path, query or userinfo)")
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, errors.New("port out of range")
	}
	return n, nil
}
