package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// pubKey is one usable signature key of a JWKS.
type pubKey struct {
	kid string
	alg string // declared "alg"; empty when the JWKS does not say
	key crypto.PublicKey
}

// keySet is an immutable snapshot of the keys of a JWKS.
type keySet struct {
	keys []pubKey
}

// match returns the keys that may verify a token signed with alg and naming
// kid ("" = any key), and whether any key has that kid at all.
func (s *keySet) match(alg, kid string) (keys []jwt.VerificationKey, kidKnown bool) {
	for _, k := range s.keys {
		if kid != "" {
			if k.kid != kid {
				continue
			}
			kidKnown = true
		}
		if (k.alg == "" || k.alg == alg) && algFitsKey(alg, k.key) {
			keys = append(keys, k.key)
		}
	}
	return keys, kidKnown
}

// algFitsKey reports whether a signature algorithm can be used with a
// public key of this type (and curve).
func algFitsKey(alg string, key crypto.PublicKey) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return true
		}
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		case "ES512":
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// newJWKSSource prepares reading cfg.JWKS, a file path or an http(s) URL.
func newJWKSSource(cfg Config) (*jwksSource, error) {
	src := &jwksSource{
		where:      cfg.JWKS,
		refresh:    cfg.RefreshInterval,
		minRefresh: cfg.MinRefreshInterval,
	}
	if src.refresh <= 0 {
		src.refresh = DefaultRefreshInterval
	}
	if src.minRefresh <= 0 {
		src.minRefresh = DefaultMinRefreshInterval
	}
	lower := strings.ToLower(cfg.JWKS)
	if !strings.HasPrefix(lower, "http://") && !strings.HasPrefix(lower, "https://") {
		path := cfg.JWKS
		src.fetch = func(context.Context) ([]byte, error) { return readFile(path) }
		return src, nil
	}
	u, err := url.Parse(cfg.JWKS)
	if err != nil {
		// Not the *url.Error itself: it repeats the URL, password and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("jwks: not a valid URL: %w", err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("jwks %s: URL has no host", u.Redacted())
	}
	src.where = u.Redacted()
	client := cfg.HTTPClient
	if client == nil {
		client = defaultHTTPClient()
		src.closeIdle = client.CloseIdleConnections // ours to clean up
	}
	target := u.String()
	src.fetch = func(ctx context.Context) ([]byte, error) { return fetchURL(ctx, client, target) }
	return src, nil
}

// defaultHTTPClient has a timeout on every step of a fetch.
func defaultHTTPClient() *http.Client {
	return &http.Client{
		Timeout: FetchTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: FetchTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   FetchTimeout,
			ResponseHeaderTimeout: FetchTimeout,
			MaxIdleConns:          2,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
	}
}

// readFile reads a JWKS file of at most MaxJWKSBytes.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		// The caller names the path; keep the cause (errors.Is still works).
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("open: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if len(data) > MaxJWKSBytes {
		return nil, fmt.Errorf("file is larger than %d bytes", MaxJWKSBytes)
	}
	return data, nil
}

// fetchURL GETs a JWKS of at most MaxJWKSBytes within FetchTimeout.
func fetchURL(ctx context.Context, client *http.Client, target string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := client.Do(req)
	if err != nil {
		// The *url.Error repeats the URL; strip it so a password in it
		// cannot leak (the caller names the redacted URL).
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("fetch: HTTP status %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch: read body: %w", err)
	}
	if len(data) > MaxJWKSBytes {
		return nil, fmt.Errorf("fetch: response is larger than %d bytes", MaxJWKSBytes)
	}
	return data, nil
}

// load fetches and parses the JWKS.
func (s *jwksSource) load(ctx context.Context, log *slog.Logger) (*keySet, error) {
	data, err := s.fetch(ctx)
	if err != nil {
		return nil, err
	}
	return parseJWKS(data, log.With("jwks", s.where))
}

// parseJWKS parses a JWKS document. A document that is not JSON with a
// "keys" array is an error; a key that cannot be used for verifying
// signatures (encryption keys, symmetric keys, unsupported curves, a declared
// alg that does not fit the key) is skipped with a log line.
func parseJWKS(data []byte, log *slog.Logger) (*keySet, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	if doc.Keys == nil {
		return nil, errors.New(`not a JWKS document: no "keys" array`)
	}
	ks := &keySet{}
	for i, raw := range doc.Keys {
		if len(ks.keys) == MaxJWKSKeys {
			log.Warn("jwks has too many keys; ignoring the rest", "max", MaxJWKSKeys, "keys", len(doc.Keys))
			break
		}
		k, err := parseJWK(raw)
		if err != nil {
			log.Warn("jwks: skipping key", "index", i, "err", err)
			continue
		}
		if rk, ok := k.key.(*rsa.PublicKey); ok && rk.N.BitLen() < 2048 {
			log.Warn("jwks: RSA key shorter than 2048 bits", "index", i, "kid", k.kid, "bits", rk.N.BitLen())
		}
		ks.keys = append(ks.keys, k)
	}
	return ks, nil
}

// parseJWK turns one JWK into a usable public signature key.
func parseJWK(raw json.RawMessage) (pubKey, error) {
	var m jwkset.JWKMarshal
	if err := json.Unmarshal(raw, &m); err != nil {
		return pubKey{}, fmt.Errorf("not a JWK: %w", err)
	}
	if m.KTY == jwkset.KtyOct {
		return pubKey{}, errors.New(`symmetric ("oct") keys are not taken from a JWKS; configure jwt_secret instead`)
	}
	if m.USE != "" && m.USE != jwkset.UseSig {
		return pubKey{}, fmt.Errorf("key use %q is not \"sig\"", m.USE)
	}
	if len(m.KEYOPS) > 0 && !slices.Contains(m.KEYOPS, jwkset.KeyOpsVerify) {
		return pubKey{}, errors.New(`key_ops does not include "verify"`)
	}
	// Private: false keeps only the public half of a key that carries more.
	// x5u is never fetched (GetX5U is nil), so its scheme does not matter.
	j, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{SkipX5UScheme: true})
	if err != nil {
		return pubKey{}, fmt.Errorf("kid %q: %w", m.KID, err)
	}
	k := pubKey{kid: m.KID, alg: string(m.ALG), key: j.Key()}
	switch key := k.key.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return pubKey{}, fmt.Errorf("kid %q: %T is not a signature key", m.KID, key)
	}
	if k.alg != "" && !algFitsKey(k.alg, k.key) {
		return pubKey{}, fmt.Errorf("kid %q: declared alg %q does not fit a %s key", m.KID, k.alg, m.KTY)
	}
	return k, nil
}

// refreshLoop re-reads the JWKS every refresh interval until Close or the
// context of New ends.
func (v *Verifier) refreshLoop() {
	defer v.wg.Done()
	t := time.NewTicker(v.jwks.refresh)
	defer t.Stop()
	for {
		select {
		case <-v.ctx.Done():
			return
		case <-t.C:
			v.jwks.mu.Lock()
			v.refreshLocked("periodic")
			v.jwks.mu.Unlock()
		}
	}
}

// refreshForUnknownKey re-reads the JWKS because a token names a key that
// is not there, unless the last fetch started less than the minimum refresh
// interval ago. Concurrent callers wait for one fetch rather than each
// making their own. The caller looks the key up again afterwards.
func (v *Verifier) refreshForUnknownKey() {
	src := v.jwks
	src.mu.Lock()
	defer src.mu.Unlock()
	if v.ctx.Err() != nil || v.now().Sub(src.lastFetch) < src.minRefresh {
		return
	}
	v.refreshLocked("unknown key")
}

// refreshLocked fetches the JWKS and replaces the cached keys; on failure
// the previous keys stay. Callers hold jwks.mu.
func (v *Verifier) refreshLocked(why string) {
	src := v.jwks
	src.lastFetch = v.now()
	ks, err := src.load(v.ctx, v.log)
	if err != nil {
		if v.ctx.Err() == nil {
			v.log.Warn("jwks refresh failed; keeping the previous keys", "jwks", src.where, "reason", why, "err", err)
		}
		return
	}
	if len(ks.keys) == 0 {
		v.log.Warn("jwks now has no usable keys; public-key tokens will be rejected", "jwks", src.where)
	}
	src.keys.Store(ks)
	v.log.Debug("jwks refreshed", "jwks", src.where, "reason", why, "keys", len(ks.keys))
}
