package limits

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// ParseTrusted parses the trusted_proxies setting: CIDRs ("10.0.0.0/8",
// "fd00::/8") or single addresses ("192.0.2.1", "::1"). Surrounding spaces
// are ignored and empty entries skipped. IPv4-mapped IPv6 entries are turned
// into their IPv4 form. An invalid entry is an error naming it.
func ParseTrusted(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, raw := range list {
		e := strings.TrimSpace(raw)
		if e == "" {
			continue
		}
		var p netip.Prefix
		if strings.Contains(e, "/") {
			var err error
			if p, err = netip.ParsePrefix(e); err != nil {
				return nil, fmt.Errorf("trusted_proxies: invalid entry %q: want an IP address or a CIDR such as 10.0.0.0/8", raw)
			}
			p = p.Masked()
		} else {
			a, err := netip.ParseAddr(e)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("trusted_proxies: invalid entry %q: want an IP address or a CIDR such as 10.0.0.0/8", raw)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if a := p.Addr(); a.Is4In6() {
			bits := max(p.Bits()-96, 0)
			p = netip.PrefixFrom(a.Unmap(), bits).Masked()
		}
		out = append(out, p)
	}
	return out, nil
}

// ClientIP returns the address of the client of r: the peer address
// (r.RemoteAddr) or, when the peer is a trusted proxy, the right-most
// address of the forwarding chain that is not trusted. The chain is read
// from X-Forwarded-For when the request has one, otherwise from Forwarded
// (RFC 7239, for= parameters, quoted or not, with or without port). Headers
// sent by an untrusted peer are never looked at.
//
// Walking the chain from the right, a malformed element ("unknown", an
// obfuscated identifier, garbage) ends the walk: the client is then the
// last trusted hop, never something to the left of the garbage, which the
// client itself could have written. When every hop is trusted, the
// left-most is returned.
//
// IPv4-mapped IPv6 addresses are returned in IPv4 form, zones are dropped.
// The result is always a valid IP address, except when RemoteAddr is not an
// IP address at all (a Unix socket): then it is "".
//
// Configure trusted_proxies to match what the proxies in front do: a proxy
// that writes only Forwarded, behind which clients may send their own
// X-Forwarded-For, must not be trusted this way.
func ClientIP(r *http.Request, trusted []netip.Prefix) string {
	peer, ok := parsePeer(r.RemoteAddr)
	if !ok {
		return ""
	}
	if !isTrusted(peer, trusted) {
		return peer.String()
	}
	if xff := r.Header.Values("X-Forwarded-For"); present(xff) {
		return walk(xff, peer, trusted, parseXFFElement).String()
	}
	if fwd := r.Header.Values("Forwarded"); present(fwd) {
		return walk(fwd, peer, trusted, parseForwardedElement).String()
	}
	return peer.String()
}

// walk goes through the comma-separated elements of the header lines from
// the right and returns the first untrusted address, or the last trusted
// one seen when an element is malformed or the chain ends.
func walk(lines []string, peer netip.Addr, trusted []netip.Prefix, parse func(string) (netip.Addr, bool)) netip.Addr {
	last := peer
	for i := len(lines) - 1; i >= 0; i-- {
		line := lines[i]
		for {
			j := strings.LastIndexByte(line, ',')
			elem := line[j+1:]
			a, ok := parse(elem)
			if !ok {
				return last
			}
			if !isTrusted(a, trusted) {
				return a
			}
			last = a
			if j < 0 {
				break
			}
			line = line[:j]
		}
	}
	return last
}

// present reports whether any of the header lines is not blank.
func present(lines []string) bool {
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			return true
		}
	}
	return false
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parsePeer parses RemoteAddr: "ip:port", "[ipv6]:port" or a bare address.
func parsePeer(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalize(ap.Addr()), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return normalize(a), true
	}
	return netip.Addr{}, false
}

func normalize(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// parseNode parses a node of a forwarding header: "1.2.3.4", "1.2.3.4:80",
// "2001:db8::1", "[2001:db8::1]" or "[2001:db8::1]:80".
func parseNode(s string) (netip.Addr, bool) {
	if s == "" || len(s) > 64 {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return normalize(a), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalize(ap.Addr()), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return normalize(a), true
		}
	}
	return netip.Addr{}, false
}

func parseXFFElement(s string) (netip.Addr, bool) {
	return parseNode(strings.Trim(s, " \t"))
}

// maxForwardedElement bounds the length of one forwarded-element (for, by,
// proto and a host name fit easily); longer ones are malformed.
const maxForwardedElement = 512

// parseForwardedElement parses one forwarded-element of RFC 7239
// ("for=192.0.2.60;proto=http;by=203.0.113.43") and returns its for= node.
// An element without exactly one for=, or whose node is "unknown" or an
// obfuscated identifier, is malformed.
func parseForwardedElement(s string) (netip.Addr, bool) {
	if len(s) > maxForwardedElement {
		return netip.Addr{}, false
	}
	var node string
	found := false
	for pair := range strings.SplitSeq(s, ";") {
		pair = strings.Trim(pair, " \t")
		if pair == "" {
			continue
		}
		name, value, ok := strings.Cut(pair, "=")
		if !ok {
			return netip.Addr{}, false
		}
		if !strings.EqualFold(strings.TrimRight(name, " \t"), "for") {
			continue
		}
		if found {
			return netip.Addr{}, false
		}
		found = true
		value = strings.TrimLeft(value, " \t")
		if strings.HasPrefix(value, `"`) {
			if len(value) < 2 || !strings.HasSuffix(value, `"`) {
				return netip.Addr{}, false
			}
			value = unquote(value[1 : len(value)-1])
		}
		node = value
	}
	if !found {
		return netip.Addr{}, false
	}
	return parseNode(node)
}

// unquote removes the backslash escapes of an RFC 7230 quoted-string body.
func unquote(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
