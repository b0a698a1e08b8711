package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/syncbuf"
)

// jwksServer serves a JWKS document that the test can swap, on 127.0.0.1,
// and counts the requests.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int64
	mu      sync.Mutex
	doc     []byte
	status  int
}

func newJWKSServer(t *testing.T, doc []byte) *jwksServer {
	t.Helper()
	s := &jwksServer{doc: doc, status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		doc, status := s.doc, s.status
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(status)
		_, _ = w.Write(doc)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(doc []byte, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc, s.status = doc, status
}

// newClockedVerifier is New with a fake clock for the refresh rate limit.
func newClockedVerifier(t *testing.T, cfg Config, clock *fakeClock) *Verifier {
	t.Helper()
	v, err := newVerifier(context.Background(), cfg, clock.Now)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

func TestJWKSFile(t *testing.T) {
	k := keys()
	path := writeFile(t, standardJWKS())
	v := newTestVerifier(t, Config{JWKS: path})
	for _, tok := range []string{
		sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", claims()),
		sign(t, jwt.SigningMethodES256, k.ec, "ec", claims()),
		sign(t, jwt.SigningMethodEdDSA, k.ed, "ed", claims()),
	} {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
}

func TestJWKSFileReloadedOnUnknownKid(t *testing.T) {
	k := keys()
	path := writeFile(t, jwksDoc(jwk(&k.rsa.PublicKey, "rsa", "RS256")))
	clock := newFakeClock()
	v := newClockedVerifier(t, Config{JWKS: path}, clock)
	tok := sign(t, jwt.SigningMethodES256, k.ec, "ec", claims())
	_, err := v.Verify(tok)
	wantReason(t, err, ReasonUnknownKeyID)

	if err := os.WriteFile(path, standardJWKS(), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(tok) // too soon after the last read
	wantReason(t, err, ReasonUnknownKeyID)
	clock.Advance(DefaultMinRefreshInterval)
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("Verify after the file changed: %v", err)
	}
}

func TestJWKSURLCachedAndRefreshedOnUnknownKid(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, jwksDoc(jwk(&k.rsa.PublicKey, "k1", "RS256")))
	clock := newFakeClock()
	v := newClockedVerifier(t, Config{JWKS: srv.URL + "/.well-known/jwks.json", RefreshInterval: time.Hour}, clock)
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("fetches after New = %d, want 1", n)
	}

	// Cached: known kids need no fetch.
	tok1 := sign(t, jwt.SigningMethodRS256, k.rsa, "k1", claims())
	for range 20 {
		if _, err := v.Verify(tok1); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("fetches after verifying known kids = %d, want 1", n)
	}

	// The IdP rotates in k2; a token with k2 makes one fetch (the minimum
	// interval has passed since New) and is accepted.
	srv.set(jwksDoc(jwk(&k.rsa.PublicKey, "k1", "RS256"), jwk(&k.rsa2.PublicKey, "k2", "RS256")), http.StatusOK)
	clock.Advance(DefaultMinRefreshInterval)
	tok2 := sign(t, jwt.SigningMethodRS256, k.rsa2, "k2", claims())
	if _, err := v.Verify(tok2); err != nil {
		t.Fatalf("Verify with rotated-in key: %v", err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("fetches after unknown kid = %d, want 2", n)
	}

	// A flood of random kids within the interval: no fetch at all.
	for i := range 50 {
		tok := sign(t, jwt.SigningMethodRS256, k.rsa, fmt.Sprintf("random-%d", i), claims())
		_, err := v.Verify(tok)
		wantReason(t, err, ReasonUnknownKeyID)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("fetches after a flood of unknown kids = %d, want 2 (rate limit)", n)
	}

	// After the interval, concurrent unknown kids share one fetch.
	clock.Advance(DefaultMinRefreshInterval + time.Second)
	nope := sign(t, jwt.SigningMethodRS256, k.rsa, "nope", claims())
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := v.Verify(nope)
			var e *Error
			if !errors.As(err, &e) || e.Reason != ReasonUnknownKeyID {
				t.Errorf("Verify = %v, want %s", err, ReasonUnknownKeyID)
			}
		})
	}
	wg.Wait()
	if n := srv.fetches.Load(); n != 3 {
		t.Fatalf("fetches after concurrent unknown kids = %d, want 3", n)
	}

	// Known kids still verify, without fetches.
	if _, err := v.Verify(tok1); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok2); err != nil {
		t.Fatal(err)
	}
	if n := srv.fetches.Load(); n != 3 {
		t.Fatalf("fetches = %d, want 3", n)
	}
}

func TestJWKSPeriodicRefresh(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, jwksDoc(jwk(&k.rsa.PublicKey, "k1", "RS256")))
	var logs syncbuf.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	v, err := New(context.Background(), Config{JWKS: srv.URL, RefreshInterval: 20 * time.Millisecond, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	tok1 := sign(t, jwt.SigningMethodRS256, k.rsa, "k1", claims())

	waitFetches := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for srv.fetches.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("fetches = %d, want >= %d", srv.fetches.Load(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFetches(3)

	// The IdP fails: the cached keys stay, and the failure is logged.
	srv.set([]byte("oops"), http.StatusInternalServerError)
	waitFetches(srv.fetches.Load() + 2)
	if _, err := v.Verify(tok1); err != nil {
		t.Fatalf("Verify while the IdP fails: %v", err)
	}
	if !strings.Contains(logs.String(), "jwks refresh failed") {
		t.Fatalf("refresh failure not logged; logs:\n%s", logs.String())
	}

	// The IdP revokes k1 for k2: the refresh drops k1.
	srv.set(jwksDoc(jwk(&k.rsa2.PublicKey, "k2", "RS256")), http.StatusOK)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Verify(tok1)
		var e *Error
		if errors.As(err, &e) && e.Reason == ReasonUnknownKeyID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoked key still accepted: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Close stops the refreshes.
	v.Close()
	n := srv.fetches.Load()
	time.Sleep(100 * time.Millisecond)
	if m := srv.fetches.Load(); m != n {
		t.Fatalf("fetches went on after Close: %d -> %d", n, m)
	}
	v.Close() // twice is fine
}

func TestJWKSRefreshStopsWithContext(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, jwksDoc(jwk(&k.rsa.PublicKey, "k1", "RS256")))
	ctx, cancel := context.WithCancel(context.Background())
	v, err := New(ctx, Config{JWKS: srv.URL, RefreshInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	cancel()
	done := make(chan struct{})
	go func() { v.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("refresh goroutine still running after ctx was cancelled")
	}
}

func TestJWKSErrors(t *testing.T) {
	k := keys()
	dir := t.TempDir()
	big := append([]byte(`{"keys":[],"pad":"`), bytes.Repeat([]byte("x"), MaxJWKSBytes)...)
	big = append(big, `"}`...)
	cases := []struct {
		name string
		doc  []byte // file content; nil: no file
		want string // in the error, besides `jwks` and the path
	}{
		{name: "missing file", doc: nil, want: "no such file"},
		{name: "not JSON", doc: []byte("not json"), want: "not a JWKS document"},
		{name: "no keys array", doc: []byte(`{"kid":"x"}`), want: `no "keys" array`},
		{name: "empty", doc: []byte(`{"keys":[]}`), want: "no usable signature keys"},
		{name: "only unusable keys", doc: jwksDoc(
			map[string]any{"kty": "oct", "k": b64([]byte("secret")), "kid": "hmac"},
			with2(jwk(&k.rsa.PublicKey, "enc", ""), "use", "enc"),
			jwk(&k.rsa.PublicKey, "wrong-alg", "ES256"),
			map[string]any{"kty": "OKP", "crv": "X25519", "x": b64(make([]byte, 32)), "kid": "x"},
			map[string]any{"kty": "RSA", "n": "!!", "e": "AQAB"},
		), want: "no usable signature keys"},
		{name: "too large", doc: big, want: "larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := dir + "/" + strings.ReplaceAll(tc.name, " ", "_") + ".json"
			if tc.doc != nil {
				if err := os.WriteFile(path, tc.doc, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := New(context.Background(), Config{JWKS: path})
			if err == nil {
				t.Fatal("New succeeded")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "jwks "+path+": ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q, want it to start with %q and contain %q", msg, "jwks "+path+": ", tc.want)
			}
		})
	}

	t.Run("HTTP status", func(t *testing.T) {
		srv := newJWKSServer(t, []byte("nope"))
		srv.set([]byte("nope"), http.StatusNotFound)
		_, err := New(context.Background(), Config{JWKS: srv.URL + "/jwks"})
		if err == nil || !strings.Contains(err.Error(), "jwks "+srv.URL+"/jwks") || !strings.Contains(err.Error(), "404") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("HTTP too large", func(t *testing.T) {
		srv := newJWKSServer(t, big)
		_, err := New(context.Background(), Config{JWKS: srv.URL})
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("password redacted", func(t *testing.T) {
		srv := newJWKSServer(t, []byte("nope"))
		u := strings.Replace(srv.URL, "http://", "http://user:hunter2@", 1)
		_, err := New(context.Background(), Config{JWKS: u})
		if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "jwks http://user:xxxxx@") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("no host", func(t *testing.T) {
		_, err := New(context.Background(), Config{JWKS: "https:///jwks.json"})
		if err == nil || !strings.Contains(err.Error(), "jwks") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("hanging server bounded by ctx", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}))
		defer srv.Close()
		defer close(release)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := New(ctx, Config{JWKS: srv.URL})
		if err == nil || time.Since(start) > 3*time.Second {
			t.Fatalf("New = %v after %v", err, time.Since(start))
		}
	})
}

func TestJWKSSkipsBadKeysKeepsGood(t *testing.T) {
	k := keys()
	var logs syncbuf.Buffer
	path := writeFile(t, jwksDoc(
		map[string]any{"kty": "oct", "k": b64([]byte(secretNew)), "kid": "hmac"},
		jwk(&k.rsa.PublicKey, "good", "RS256"),
		map[string]any{"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "broken"},
	))
	v := newTestVerifier(t, Config{JWKS: path, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa, "good", claims())); err != nil {
		t.Fatal(err)
	}
	// The symmetric JWKS key is never an HMAC secret.
	_, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secretNew), "hmac", claims()))
	wantReason(t, err, ReasonAlgNotAllowed)
	if !strings.Contains(logs.String(), "skipping key") {
		t.Fatalf("skipped keys not logged:\n%s", logs.String())
	}
}

func TestJWKSPrivateKeyMaterialIgnored(t *testing.T) {
	k := keys()
	// A JWKS that (wrongly) publishes the private part: only the public key is used.
	m := jwk(k.ed.Public(), "ed", "EdDSA")
	m["d"] = b64(k.ed.Seed())
	v := newTestVerifier(t, Config{JWKS: writeFile(t, jwksDoc(m))})
	if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, k.ed, "ed", claims())); err != nil {
		t.Fatal(err)
	}
	ks := v.jwks.keys.Load()
	if len(ks.keys) != 1 {
		t.Fatalf("keys = %d", len(ks.keys))
	}
	if _, ok := ks.keys[0].key.(interface{ Public() any }); ok {
		t.Fatalf("kept private key %T", ks.keys[0].key)
	}
}

func with2(m map[string]any, k string, v any) map[string]any {
	m[k] = v
	return m
}
