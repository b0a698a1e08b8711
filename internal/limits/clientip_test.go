package limits

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func mustTrusted(t testing.TB, list ...string) []netip.Prefix {
	t.Helper()
	p, err := ParseTrusted(list)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClientIP(t *testing.T) {
	trusted := mustTrusted(t, "10.0.0.0/8", "192.168.1.1", "fd00::/8", " ::1 ")
	tests := []struct {
		name   string
		remote string
		xff    []string
		fwd    []string
		want   string
	}{
		{"no proxy", "203.0.113.7:5555", nil, nil, "203.0.113.7"},
		{"untrusted peer with XFF is not believed", "203.0.113.7:5555", []string{"1.2.3.4"}, nil, "203.0.113.7"},
		{"untrusted peer with Forwarded is not believed", "203.0.113.7:5555", nil, []string{"for=1.2.3.4"}, "203.0.113.7"},
		{"untrusted peer forging a trusted chain", "203.0.113.7:5555", []string{"1.2.3.4, 10.0.0.2"}, nil, "203.0.113.7"},
		{"trusted peer without header", "10.0.0.1:80", nil, nil, "10.0.0.1"},
		{"trusted peer, one hop", "10.0.0.1:80", []string{"198.51.100.9"}, nil, "198.51.100.9"},
		{"trusted single IP", "192.168.1.1:80", []string{"198.51.100.9"}, nil, "198.51.100.9"},
		{"neighbour of trusted single IP is untrusted", "192.168.1.2:80", []string{"198.51.100.9"}, nil, "192.168.1.2"},
		{"trusted chain", "10.0.0.1:80", []string{"198.51.100.9, 10.0.0.2, 10.0.0.3"}, nil, "198.51.100.9"},
		{"spoofed left part ignored", "10.0.0.1:80", []string{"6.6.6.6, 10.9.9.9, 198.51.100.9, 10.0.0.2"}, nil, "198.51.100.9"},
		{"all hops trusted: left-most", "10.0.0.1:80", []string{"10.0.0.3, 10.0.0.2"}, nil, "10.0.0.3"},
		{"several header lines", "10.0.0.1:80", []string{"6.6.6.6", "198.51.100.9, 10.0.0.2"}, nil, "198.51.100.9"},
		{"several header lines, chain crosses lines", "10.0.0.1:80", []string{"6.6.6.6, 198.51.100.9", "10.0.0.2"}, nil, "198.51.100.9"},
		{"spaces and tabs", "10.0.0.1:80", []string{" 6.6.6.6 ,\t198.51.100.9 \t"}, nil, "198.51.100.9"},
		{"malformed right-most: the proxy", "10.0.0.1:80", []string{"198.51.100.9, garbage"}, nil, "10.0.0.1"},
		{"malformed behind a trusted hop: that hop", "10.0.0.1:80", []string{"6.6.6.6, garbage, 10.0.0.2"}, nil, "10.0.0.2"},
		{"malformed left of the client is not reached", "10.0.0.1:80", []string{"garbage, 198.51.100.9"}, nil, "198.51.100.9"},
		{"empty element", "10.0.0.1:80", []string{"6.6.6.6,,"}, nil, "10.0.0.1"},
		{"blank XFF", "10.0.0.1:80", []string{"  "}, nil, "10.0.0.1"},
		{"unknown in XFF", "10.0.0.1:80", []string{"unknown"}, nil, "10.0.0.1"},
		{"hostname in XFF", "10.0.0.1:80", []string{"evil.example"}, nil, "10.0.0.1"},
		{"XFF with port", "10.0.0.1:80", []string{"198.51.100.9:4711"}, nil, "198.51.100.9"},
		{"XFF IPv6", "10.0.0.1:80", []string{"2001:db8::9"}, nil, "2001:db8::9"},
		{"XFF IPv6 bracketed with port", "10.0.0.1:80", []string{"[2001:db8::9]:4711"}, nil, "2001:db8::9"},
		{"XFF IPv6 bracketed", "10.0.0.1:80", []string{"[2001:DB8::9]"}, nil, "2001:db8::9"},
		{"XFF IPv4-mapped", "10.0.0.1:80", []string{"::ffff:198.51.100.9"}, nil, "198.51.100.9"},
		{"XFF IPv4-mapped trusted hop", "10.0.0.1:80", []string{"198.51.100.9, ::ffff:10.0.0.2"}, nil, "198.51.100.9"},
		{"XFF overlong element", "10.0.0.1:80", []string{strings.Repeat("1", 100)}, nil, "10.0.0.1"},
		{"IPv6 trusted peer", "[fd00::1]:443", []string{"2001:db8::9"}, nil, "2001:db8::9"},
		{"IPv6 loopback peer", "[::1]:443", []string{"198.51.100.9"}, nil, "198.51.100.9"},
		{"IPv6 untrusted peer", "[2001:db8::7]:443", []string{"198.51.100.9"}, nil, "2001:db8::7"},
		{"IPv4-mapped trusted peer", "[::ffff:10.0.0.1]:80", []string{"198.51.100.9"}, nil, "198.51.100.9"},
		{"IPv4-mapped untrusted peer", "[::ffff:203.0.113.7]:80", nil, nil, "203.0.113.7"},
		{"peer with zone", "[fe80::1%eth0]:80", nil, nil, "fe80::1"},
		{"peer without port", "203.0.113.7", nil, nil, "203.0.113.7"},
		{"unix socket peer", "@", []string{"198.51.100.9"}, nil, ""},
		{"empty peer", "", nil, nil, ""},

		{"Forwarded", "10.0.0.1:80", nil, []string{"for=198.51.100.9;proto=https;by=10.0.0.1"}, "198.51.100.9"},
		{"Forwarded quoted IPv6 with port", "10.0.0.1:80", nil, []string{`for="[2001:db8:cafe::17]:4711"`}, "2001:db8:cafe::17"},
		{"Forwarded quoted IPv4 with port, upper-case name", "10.0.0.1:80", nil, []string{`For="198.51.100.9:47011"`}, "198.51.100.9"},
		{"Forwarded quoted with escapes", "10.0.0.1:80", nil, []string{`for="198.51.100.\9"`}, "198.51.100.9"},
		{"Forwarded chain", "10.0.0.1:80", nil, []string{"for=6.6.6.6, for=198.51.100.9;proto=http, for=10.0.0.9"}, "198.51.100.9"},
		{"Forwarded several lines", "10.0.0.1:80", nil, []string{"for=6.6.6.6", "for=198.51.100.9, for=10.0.0.9"}, "198.51.100.9"},
		{"Forwarded parameter order and spaces", "10.0.0.1:80", nil, []string{"proto=https ; for=198.51.100.9 ; host=x"}, "198.51.100.9"},
		{"Forwarded unknown", "10.0.0.1:80", nil, []string{"for=6.6.6.6, for=unknown"}, "10.0.0.1"},
		{"Forwarded obfuscated behind trusted hop", "10.0.0.1:80", nil, []string{"for=_hidden, for=10.0.0.9"}, "10.0.0.9"},
		{"Forwarded without for", "10.0.0.1:80", nil, []string{"proto=https;by=10.0.0.1"}, "10.0.0.1"},
		{"Forwarded two for in one element", "10.0.0.1:80", nil, []string{"for=6.6.6.6;for=198.51.100.9"}, "10.0.0.1"},
		{"Forwarded unbalanced quote", "10.0.0.1:80", nil, []string{`for="198.51.100.9`}, "10.0.0.1"},
		{"Forwarded client quote cannot swallow the proxy's element", "10.0.0.1:80", nil, []string{`for="6.6.6.6, for=198.51.100.9`}, "198.51.100.9"},
		{"Forwarded pair without value", "10.0.0.1:80", nil, []string{"for"}, "10.0.0.1"},
		{"Forwarded bare IPv6 (lenient)", "10.0.0.1:80", nil, []string{"for=2001:db8::9"}, "2001:db8::9"},
		{"XFF wins over Forwarded", "10.0.0.1:80", []string{"198.51.100.9"}, []string{"for=6.6.6.6"}, "198.51.100.9"},
		{"blank XFF falls back to Forwarded", "10.0.0.1:80", []string{""}, []string{"for=198.51.100.9"}, "198.51.100.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.remote, Header: http.Header{}}
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			for _, v := range tt.fwd {
				r.Header.Add("Forwarded", v)
			}
			if got := ClientIP(r, trusted); got != tt.want {
				t.Errorf("ClientIP = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestClientIPNoTrusted(t *testing.T) {
	r := &http.Request{RemoteAddr: "10.0.0.1:80", Header: http.Header{"X-Forwarded-For": {"1.2.3.4"}}}
	if got := ClientIP(r, nil); got != "10.0.0.1" {
		t.Fatalf("ClientIP without trusted proxies = %q", got)
	}
}

func TestParseTrusted(t *testing.T) {
	got, err := ParseTrusted([]string{"10.0.0.0/8", " 192.168.1.1 ", "", "fd00::/8", "::1", "10.1.2.3/8", "::ffff:172.16.0.0/108", "::ffff:1.2.3.4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.168.1.1/32", "fd00::/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "1.2.3.4/32"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("entry %d: %s, want %s", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "10.0.0", "example.com", "fe80::1%eth0", "10.0.0.1/", "*", "::1/129"} {
		_, err := ParseTrusted([]string{"10.0.0.0/8", bad})
		if err == nil {
			t.Errorf("ParseTrusted(%q): no error", bad)
			continue
		}
		if !strings.Contains(err.Error(), "trusted_proxies") || !strings.Contains(err.Error(), strconv.Quote(bad)) {
			t.Errorf("ParseTrusted(%q): error %q does not name the setting and the entry", bad, err)
		}
	}
}

func FuzzClientIP(f *testing.F) {
	trusted := mustTrusted(f, "10.0.0.0/8", "fd00::/8", "127.0.0.1")
	for _, s := range [][3]string{
		{"10.0.0.1:80", "1.2.3.4, 10.0.0.2", ""},
		{"10.0.0.1:80", "", `for="[2001:db8::1]:80";proto=https, for=10.0.0.3`},
		{"[fd00::1]:443", "garbage,\t[::ffff:1.2.3.4]:9", "for=unknown"},
		{"203.0.113.7:1", "1.2.3.4", "for=1.2.3.4"},
		{"@", "1.2.3.4", ""},
		{"10.0.0.1:80", "a\n10.0.0.7", `for="\"`},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, remote, xff, fwd string) {
		for _, peer := range []string{remote, "10.0.0.1:1234", "[fd00::5]:443"} {
			r := &http.Request{RemoteAddr: peer, Header: http.Header{}}
			if xff != "" {
				r.Header["X-Forwarded-For"] = strings.Split(xff, "\n")
			}
			if fwd != "" {
				r.Header["Forwarded"] = strings.Split(fwd, "\n")
			}
			got := ClientIP(r, trusted)
			p, ok := parsePeer(peer)
			if !ok {
				if got != "" {
					t.Fatalf("RemoteAddr %q is not an address, ClientIP = %q", peer, got)
				}
				continue
			}
			a, err := netip.ParseAddr(got)
			if err != nil || a.String() != got || a.Zone() != "" || a.Is4In6() {
				t.Fatalf("ClientIP(%q, xff %q, fwd %q) = %q: not a canonical IP", peer, xff, fwd, got)
			}
			if !isTrusted(p, trusted) && got != p.String() {
				t.Fatalf("untrusted peer %q: ClientIP = %q, headers believed", peer, got)
			}
			if strings.TrimSpace(xff) == "" && strings.TrimSpace(fwd) == "" && got != p.String() {
				t.Fatalf("no forwarding header, ClientIP = %q, want the peer %s", got, p)
			}
		}
	})
}
