// Package auth verifies the JWTs that clients present (SPEC §6) and mints
// development tokens.
//
// Two kinds of keys are supported, and each only for its own algorithms:
//
//   - HMAC secrets (Config.Secrets) verify HS256, HS384 and HS512 tokens.
//     Several secrets may be configured so that one can be rotated without
//     cutting anyone off; any of them may verify a token.
//   - Public keys from a JWKS document (Config.JWKS, a file or an http(s)
//     URL) verify RS*, PS*, ES* and EdDSA tokens. A key is only used for an
//     algorithm that matches its type (and curve), and its declared "alg",
//     "use" and "key_ops" when present.
//
// A token signed with any other algorithm, including "none", is rejected,
// and no key is ever used for an algorithm of another family: an HS256 token
// is never checked against public key bytes, and an RS256 token never against
// a secret (algorithm confusion).
//
// Claims: "sub" is required and must be a valid user id. "exp", "nbf" and
// "iat" are checked when present, with a leeway of [Leeway] for clock skew.
// A token without "exp" is accepted and never expires; issuers that want
// expiring sessions must set it. "iss" and "aud" are checked when
// Config.Issuer and Config.Audience are set (a token must then carry them).
//
// A token is never logged, and no error of this package contains it.
package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/event"
)

// Limits and defaults of the verifier.
const (
	// MaxTokenBytes is the longest token Verify parses; longer ones are
	// rejected as "malformed: too long" before any decoding.
	MaxTokenBytes = 8 << 10
	// Leeway is the clock skew tolerated when checking exp, nbf and iat.
	Leeway = 5 * time.Second
	// DefaultRefreshInterval is how often a JWKS is re-read when
	// Config.RefreshInterval is zero.
	DefaultRefreshInterval = 10 * time.Minute
	// DefaultMinRefreshInterval is the least time between two JWKS fetches
	// caused by tokens with an unknown key id, when Config.MinRefreshInterval
	// is zero.
	DefaultMinRefreshInterval = 30 * time.Second
	// FetchTimeout bounds one fetch of a JWKS URL.
	FetchTimeout = 5 * time.Second
	// MaxJWKSBytes is the largest JWKS document accepted.
	MaxJWKSBytes = 1 << 20
	// MaxJWKSKeys is the most keys taken from one JWKS document; the rest
	// are ignored with a warning.
	MaxJWKSKeys = 100
)

// Reasons a token is rejected: the values of Error.Reason.
const (
	ReasonTooLong        = "malformed: too long"             // longer than MaxTokenBytes
	ReasonMalformed      = "malformed"                       // not three base64url JSON segments, bad claim types, "crit" header
	ReasonBadSignature   = "bad signature"                   // no configured key verifies the signature
	ReasonExpired        = "expired"                         // exp (plus Leeway) has passed
	ReasonNotYetValid    = "not yet valid"                   // nbf (less Leeway) is in the future
	ReasonIssuedInFuture = "issued in the future"            // iat (less Leeway) is in the future
	ReasonWrongIssuer    = "wrong issuer"                    // iss missing or not Config.Issuer
	ReasonWrongAudience  = "wrong audience"                  // aud missing or without Config.Audience
	ReasonUnknownKeyID   = "unknown key id"                  // kid not in the JWKS, even after a refresh
	ReasonNoMatchingKey  = "no matching key"                 // no kid, and no JWKS key fits the algorithm
	ReasonKeyAlgMismatch = "algorithm not allowed for key"   // the kid's key has another type, curve or declared alg
	ReasonAlgNotAllowed  = "algorithm not allowed"           // none, unknown, or no keys of that family configured
	ReasonMissingSubject = "missing sub"                     // sub missing or empty
	ReasonInvalidSubject = "invalid sub"                     // sub is not a valid user id (event.ValidUserID)
	ReasonNotConfigured  = "no verification keys configured" // neither secrets nor JWKS
)

// Config of the verifier.
type Config struct {
	// Secrets are HMAC secrets for HS256/HS384/HS512 tokens. Several may be
	// given for rotation; any of them may verify a token. Empty strings are
	// ignored.
	Secrets []string
	// JWKS is a file path or an http(s) URL of a JWKS document holding RSA,
	// ECDSA or EdDSA public keys. Empty: no public-key tokens.
	JWKS string
	// Issuer, when not empty, must equal the token's "iss".
	Issuer string
	// Audience, when not empty, must be among the token's "aud".
	Audience string
	// HTTPClient fetches a JWKS URL. Nil: a client with timeouts.
	HTTPClient *http.Client
	// Logger receives warnings about keys and refreshes. Nil: discard.
	Logger *slog.Logger
	// RefreshInterval is how often the JWKS is re-read in the background.
	// Zero: DefaultRefreshInterval.
	RefreshInterval time.Duration
	// MinRefreshInterval is the least time between two JWKS fetches caused
	// by tokens naming an unknown key id, so that a flood of made-up key ids
	// cannot hammer the identity provider. Zero: DefaultMinRefreshInterval.
	MinRefreshInterval time.Duration
}

// Claims are the verified claims of a token.
type Claims struct {
	// Subject is "sub": the user id. Never empty in a verified token.
	Subject string
	// ExpiresAt is "exp"; zero when the token has none (it never expires).
	ExpiresAt time.Time
	// IssuedAt is "iat"; zero when the token has none.
	IssuedAt time.Time
	// NotBefore is "nbf"; zero when the token has none.
	NotBefore time.Time
	// ID is "jti"; empty when the token has none.
	ID string
}

// Error is a rejected token. Reason is short and human-readable (one of the
// Reason constants); the server sends it to clients as the message of
// {"type":"error","code":"invalid_token"}. Err, when not nil, is the
// underlying cause, for logs.
type Error struct {
	Reason string
	Err    error
}

// Error returns "invalid token: <reason>".
func (e *Error) Error() string { return "invalid token: " + e.Reason }

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

func reject(reason string, err error) *Error { return &Error{Reason: reason, Err: err} }

// Verifier checks tokens. It is safe for concurrent use. Close it to stop
// the background refresh of a JWKS.
type Verifier struct {
	secrets  []jwt.VerificationKey
	issuer   string
	audience string
	log      *slog.Logger
	now      func() time.Time
	parser   *jwt.Parser
	times    *jwt.Validator

	jwks *jwksSource // nil without JWKS

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// jwksSource is the configured JWKS and its cache.
type jwksSource struct {
	where      string // path, or URL with any password redacted, for messages
	fetch      func(ctx context.Context) ([]byte, error)
	keys       atomic.Pointer[keySet]
	refresh    time.Duration
	minRefresh time.Duration
	closeIdle  func() // of the HTTP client made here; nil otherwise

	mu        sync.Mutex // serializes fetches; guards lastFetch
	lastFetch time.Time  // start of the last fetch attempt, good or bad
}

// New returns a verifier for cfg. With a JWKS it reads the file or fetches
// the URL once, and fails when that is not possible or yields no usable key;
// the error names the setting `jwks` and the path or URL. It then re-reads
// the JWKS every RefreshInterval in the background until ctx is done or
// Close is called.
func New(ctx context.Context, cfg Config) (*Verifier, error) {
	return newVerifier(ctx, cfg, time.Now)
}

func newVerifier(ctx context.Context, cfg Config, now func() time.Time) (*Verifier, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := &Verifier{
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
		log:      log,
		now:      now,
	}
	for i, s := range cfg.Secrets {
		if s == "" {
			continue
		}
		if len(s) < 32 {
			log.Warn("jwt_secret is shorter than 32 bytes; HS256 tokens are only as strong as their secret", "secret_index", i)
		}
		v.secrets = append(v.secrets, []byte(s))
	}
	// keyFunc is the one gate for algorithms (it knows which keys exist);
	// claims are validated in Verify, in a fixed order.
	v.parser = jwt.NewParser(jwt.WithStrictDecoding(), jwt.WithoutClaimsValidation())
	v.times = jwt.NewValidator(jwt.WithLeeway(Leeway), jwt.WithTimeFunc(now), jwt.WithIssuedAt())

	if ctx == nil {
		ctx = context.Background()
	}
	v.ctx, v.cancel = context.WithCancel(ctx)
	if cfg.JWKS != "" {
		src, err := newJWKSSource(cfg)
		if err != nil {
			v.cancel()
			return nil, err
		}
		v.jwks = src
		src.lastFetch = now()
		ks, err := src.load(v.ctx, log)
		if err == nil && len(ks.keys) == 0 {
			err = errors.New("no usable signature keys (RSA, EC P-256/P-384/P-521 or Ed25519)")
		}
		if err != nil {
			v.Close()
			return nil, fmt.Errorf("jwks %s: %w", src.where, err)
		}
		src.keys.Store(ks)
		v.wg.Add(1)
		go v.refreshLoop()
	}
	return v, nil
}

// Enabled reports whether any key is configured: false when neither
// secrets nor a JWKS were given, in which case every token is rejected.
func (v *Verifier) Enabled() bool { return len(v.secrets) > 0 || v.jwks != nil }

// Close stops the background refresh and waits for it. Verify keeps working
// with the keys already loaded. Close may be called more than once.
func (v *Verifier) Close() {
	v.cancel()
	v.wg.Wait()
	if v.jwks != nil && v.jwks.closeIdle != nil {
		v.jwks.closeIdle()
	}
}

// Verify checks token's size, syntax, algorithm, signature and claims, in
// that order, and returns its claims. The error is always an *Error. Claims
// are only looked at once the signature is good, so a forged token is never
// told that it expired. A token without exp is accepted (ExpiresAt is zero).
//
// Verify does no I/O, except when a public-key token names a key id that
// the cached JWKS lacks: then it re-reads the JWKS first, at most once per
// MinRefreshInterval across all callers, which may take up to FetchTimeout.
func (v *Verifier) Verify(token string) (Claims, error) {
	if len(token) > MaxTokenBytes {
		return Claims{}, reject(ReasonTooLong, fmt.Errorf("token is %d bytes, more than %d", len(token), MaxTokenBytes))
	}
	if !v.Enabled() {
		return Claims{}, reject(ReasonNotConfigured, nil)
	}
	var rc jwt.RegisteredClaims
	if _, err := v.parser.ParseWithClaims(token, &rc, v.keyFunc); err != nil {
		return Claims{}, classify(err)
	}
	if v.issuer != "" && rc.Issuer != v.issuer {
		return Claims{}, reject(ReasonWrongIssuer, fmt.Errorf("iss %q, want %q", rc.Issuer, v.issuer))
	}
	if v.audience != "" && !slices.Contains(rc.Audience, v.audience) {
		return Claims{}, reject(ReasonWrongAudience, fmt.Errorf("aud %q does not include %q", []string(rc.Audience), v.audience))
	}
	if err := v.times.Validate(rc); err != nil {
		switch {
		case errors.Is(err, jwt.ErrTokenExpired):
			return Claims{}, reject(ReasonExpired, err)
		case errors.Is(err, jwt.ErrTokenNotValidYet):
			return Claims{}, reject(ReasonNotYetValid, err)
		case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
			return Claims{}, reject(ReasonIssuedInFuture, err)
		default:
			return Claims{}, reject(ReasonMalformed, err)
		}
	}
	if rc.Subject == "" {
		return Claims{}, reject(ReasonMissingSubject, nil)
	}
	if !event.ValidUserID(rc.Subject) {
		return Claims{}, reject(ReasonInvalidSubject, errors.New("sub must be 1 to 256 bytes of UTF-8 without control characters"))
	}
	c := Claims{Subject: rc.Subject, ID: rc.ID}
	if rc.ExpiresAt != nil {
		c.ExpiresAt = rc.ExpiresAt.Time
	}
	if rc.IssuedAt != nil {
		c.IssuedAt = rc.IssuedAt.Time
	}
	if rc.NotBefore != nil {
		c.NotBefore = rc.NotBefore.Time
	}
	return c, nil
}

// classify turns an error of the jwt parser into an *Error.
func classify(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e // from keyFunc
	case errors.Is(err, jwt.ErrTokenMalformed):
		return reject(ReasonMalformed, err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return reject(ReasonBadSignature, err)
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// "alg" missing or unknown to the jwt package.
		return reject(ReasonAlgNotAllowed, err)
	default:
		return reject(ReasonMalformed, err)
	}
}

// keyFunc chooses the keys that may verify t: secrets for HS*, JWKS keys
// matching the algorithm (and kid) for the others. It never mixes them.
func (v *Verifier) keyFunc(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515 §4.1.11: we understand no extension, so must reject.
		return nil, reject(ReasonMalformed, errors.New(`unsupported "crit" header`))
	}
	alg := t.Method.Alg()
	switch alg {
	case "HS256", "HS384", "HS512":
		if len(v.secrets) == 0 {
			return nil, reject(ReasonAlgNotAllowed, fmt.Errorf("%s needs a jwt_secret, none configured", alg))
		}
		return jwt.VerificationKeySet{Keys: v.secrets}, nil
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA":
		if v.jwks == nil {
			return nil, reject(ReasonAlgNotAllowed, fmt.Errorf("%s needs a jwks, none configured", alg))
		}
	default:
		return nil, reject(ReasonAlgNotAllowed, fmt.Errorf("algorithm %q", alg))
	}
	var kid string
	if raw, ok := t.Header["kid"]; ok {
		s, ok := raw.(string)
		if !ok {
			return nil, reject(ReasonMalformed, errors.New(`"kid" header is not a string`))
		}
		kid = s
	}
	keys, known := v.jwks.keys.Load().match(alg, kid)
	if len(keys) == 0 {
		// Perhaps the issuer rotated its keys: re-read the JWKS (rate-limited).
		v.refreshForUnknownKey()
		keys, known = v.jwks.keys.Load().match(alg, kid)
	}
	if len(keys) == 0 {
		switch {
		case kid == "":
			return nil, reject(ReasonNoMatchingKey, fmt.Errorf("no JWKS key for %s", alg))
		case !known:
			return nil, reject(ReasonUnknownKeyID, nil)
		default:
			return nil, reject(ReasonKeyAlgMismatch, fmt.Errorf("JWKS key does not allow %s", alg))
		}
	}
	return jwt.VerificationKeySet{Keys: keys}, nil
}
