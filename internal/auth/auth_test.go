package auth

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func newTestVerifier(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	v, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// wantReason asserts that err is an *Error with exactly this reason.
func wantReason(t *testing.T, err error, reason string) {
	t.Helper()
	if reason == "" {
		if err != nil {
			t.Fatalf("want accepted, got %v (cause: %v)", err, errors.Unwrap(err))
		}
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error %q, got %T %v", reason, err, err)
	}
	if e.Reason != reason {
		t.Fatalf("reason = %q, want %q (cause: %v)", e.Reason, reason, e.Err)
	}
	if got, want := e.Error(), "invalid token: "+reason; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}

func TestVerify(t *testing.T) {
	k := keys()
	jwksPath := writeFile(t, standardJWKS())

	both := newTestVerifier(t, Config{Secrets: []string{secretNew, "", secretOld}, JWKS: jwksPath})
	hmacOnly := newTestVerifier(t, Config{Secrets: []string{secretNew}})
	jwksOnly := newTestVerifier(t, Config{JWKS: jwksPath})
	strict := newTestVerifier(t, Config{Secrets: []string{secretNew}, Issuer: "https://idp.example", Audience: "knowledgehub"})

	now := time.Now()
	pubDER, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	pkcs1PEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})
	validHS := sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", claims())
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims())
	noneWithKid := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "rsa", claims())
	parts := strings.Split(validHS, ".")
	critTok := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims())
		tok.Header["crit"] = []string{"exp"}
		s, err := tok.SignedString([]byte(secretNew))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	kidNumber := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims())
		tok.Header["kid"] = 42
		s, err := tok.SignedString(k.rsa)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()

	cases := []struct {
		name   string
		v      *Verifier
		token  string
		reason string // "" = accepted
		sub    string
	}{
		// HMAC and rotation.
		{name: "HS256 new secret", v: both, token: validHS, sub: "alice"},
		{name: "HS256 old secret", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretOld), "", claims()), sub: "alice"},
		{name: "HS384", v: both, token: sign(t, jwt.SigningMethodHS384, []byte(secretOld), "", claims()), sub: "alice"},
		{name: "HS512", v: hmacOnly, token: sign(t, jwt.SigningMethodHS512, []byte(secretNew), "", claims()), sub: "alice"},
		{name: "HS256 wrong secret", v: both, token: sign(t, jwt.SigningMethodHS256, []byte("another-secret-0123456789abcdef012345"), "", claims()), reason: ReasonBadSignature},
		{name: "HS256 old secret no longer configured", v: hmacOnly, token: sign(t, jwt.SigningMethodHS256, []byte(secretOld), "", claims()), reason: ReasonBadSignature},
		{name: "HS256 without secrets", v: jwksOnly, token: validHS, reason: ReasonAlgNotAllowed},

		// alg none and unknown algorithms.
		{name: "alg none", v: both, token: none, reason: ReasonAlgNotAllowed},
		{name: "alg none with kid", v: jwksOnly, token: noneWithKid, reason: ReasonAlgNotAllowed},
		{name: "alg none empty signature", v: hmacOnly, token: strings.TrimSuffix(none, "."), reason: ReasonMalformed},
		{name: "unknown alg", v: both, token: b64([]byte(`{"alg":"HS1","typ":"JWT"}`)) + "." + parts[1] + "." + parts[2], reason: ReasonAlgNotAllowed},
		{name: "alg missing", v: both, token: b64([]byte(`{"typ":"JWT"}`)) + "." + parts[1] + "." + parts[2], reason: ReasonAlgNotAllowed},

		// Algorithm confusion.
		{name: "HS256 keyed with RSA public PEM, kid of RSA key", v: both, token: sign(t, jwt.SigningMethodHS256, pubPEM, "rsa", claims()), reason: ReasonBadSignature},
		{name: "HS256 keyed with RSA PKCS1 PEM", v: both, token: sign(t, jwt.SigningMethodHS256, pkcs1PEM, "rsa", claims()), reason: ReasonBadSignature},
		{name: "HS256 keyed with RSA modulus", v: both, token: sign(t, jwt.SigningMethodHS256, k.rsa.N.Bytes(), "rsa", claims()), reason: ReasonBadSignature},
		{name: "HS256 keyed with RSA public PEM, JWKS only", v: jwksOnly, token: sign(t, jwt.SigningMethodHS256, pubPEM, "rsa", claims()), reason: ReasonAlgNotAllowed},
		{name: "RS256 without JWKS", v: hmacOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", claims()), reason: ReasonAlgNotAllowed},
		{name: "ES256 with kid of RSA key", v: jwksOnly, token: sign(t, jwt.SigningMethodES256, k.ec, "rsa", claims()), reason: ReasonKeyAlgMismatch},
		{name: "RS256 with key declared RS384", v: jwksOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa2, "rsa384-only", claims()), reason: ReasonKeyAlgMismatch},
		{name: "EdDSA with kid of EC key", v: jwksOnly, token: sign(t, jwt.SigningMethodEdDSA, k.ed, "ec", claims()), reason: ReasonKeyAlgMismatch},
		{name: "ES384 with P-256 key", v: jwksOnly, token: reheader(sign(t, jwt.SigningMethodES256, k.ec, "ec", claims()), `{"alg":"ES384","kid":"ec"}`), reason: ReasonKeyAlgMismatch},

		// Public keys from the JWKS.
		{name: "RS256", v: jwksOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", claims()), sub: "alice"},
		{name: "RS256 no kid", v: jwksOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa, "", claims()), sub: "alice"},
		{name: "RS384 declared", v: jwksOnly, token: sign(t, jwt.SigningMethodRS384, k.rsa2, "rsa384-only", claims()), sub: "alice"},
		{name: "PS256", v: jwksOnly, token: sign(t, jwt.SigningMethodPS256, k.rsa, "rsa", claims()), sub: "alice"},
		{name: "ES256", v: jwksOnly, token: sign(t, jwt.SigningMethodES256, k.ec, "ec", claims()), sub: "alice"},
		{name: "EdDSA", v: both, token: sign(t, jwt.SigningMethodEdDSA, k.ed, "ed", claims()), sub: "alice"},
		{name: "RS256 signed by another key", v: jwksOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa2, "rsa", claims()), reason: ReasonBadSignature},
		{name: "RS256 no kid, unknown key", v: jwksOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa2, "", claims()), reason: ReasonBadSignature},
		{name: "ES512 no kid, no P-521 key", v: jwksOnly, token: esNoKey(t), reason: ReasonNoMatchingKey},
		{name: "unknown kid", v: jwksOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa, "nope", claims()), reason: ReasonUnknownKeyID},
		{name: "kid not a string", v: jwksOnly, token: kidNumber, reason: ReasonMalformed},
		{name: "crit header", v: both, token: critTok, reason: ReasonMalformed},

		// Time claims (leeway 5 s).
		{name: "expired", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", now.Add(-time.Hour).Unix(), "iat", now.Add(-2*time.Hour).Unix())), reason: ReasonExpired},
		{name: "expired RS256", v: jwksOnly, token: sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(claims(), "exp", now.Add(-time.Minute).Unix())), reason: ReasonExpired},
		{name: "expired within leeway", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", now.Add(-2*time.Second).Unix())), sub: "alice"},
		{name: "expired beyond leeway", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", now.Add(-10*time.Second).Unix())), reason: ReasonExpired},
		{name: "forged and expired says bad signature", v: both, token: sign(t, jwt.SigningMethodHS256, []byte("forger-0123456789abcdef0123456789ab"), "", with(claims(), "exp", now.Add(-time.Hour).Unix())), reason: ReasonBadSignature},
		{name: "no exp accepted", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", nil)), sub: "alice"},
		{name: "nbf in future", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "nbf", now.Add(time.Hour).Unix())), reason: ReasonNotYetValid},
		{name: "nbf within leeway", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "nbf", now.Add(2*time.Second).Unix())), sub: "alice"},
		{name: "iat in future", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iat", now.Add(time.Hour).Unix())), reason: ReasonIssuedInFuture},
		{name: "exp not a number", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", "tomorrow")), reason: ReasonMalformed},

		// Issuer and audience.
		{name: "iss and aud ok", v: strict, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iss", "https://idp.example", "aud", []string{"other", "knowledgehub"})), sub: "alice"},
		{name: "aud as string ok", v: strict, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iss", "https://idp.example", "aud", "knowledgehub")), sub: "alice"},
		{name: "wrong iss", v: strict, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iss", "https://evil.example", "aud", "knowledgehub")), reason: ReasonWrongIssuer},
		{name: "missing iss", v: strict, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "aud", "knowledgehub")), reason: ReasonWrongIssuer},
		{name: "wrong aud", v: strict, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iss", "https://idp.example", "aud", "someone-else")), reason: ReasonWrongAudience},
		{name: "missing aud", v: strict, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iss", "https://idp.example")), reason: ReasonWrongAudience},
		{name: "wrong iss beats expired", v: strict, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iss", "x", "aud", "knowledgehub", "exp", now.Add(-time.Hour).Unix())), reason: ReasonWrongIssuer},
		{name: "iss not checked when not configured", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "iss", "anyone", "aud", "anything")), sub: "alice"},

		// Subject.
		{name: "missing sub", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", nil)), reason: ReasonMissingSubject},
		{name: "empty sub", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", "")), reason: ReasonMissingSubject},
		{name: "sub with control character", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", "al\nice")), reason: ReasonInvalidSubject},
		{name: "sub too long", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", strings.Repeat("a", 257))), reason: ReasonInvalidSubject},
		{name: "sub not a string", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", 42)), reason: ReasonMalformed},
		{name: "unicode sub", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", "zoë")), sub: "zoë"},

		// Malformed input.
		{name: "empty", v: both, token: "", reason: ReasonMalformed},
		{name: "not a JWT", v: both, token: "hello", reason: ReasonMalformed},
		{name: "truncated", v: both, token: validHS[:len(validHS)/2], reason: ReasonMalformed},
		{name: "signature cut off", v: both, token: parts[0] + "." + parts[1] + ".", reason: ReasonBadSignature},
		{name: "signature shortened", v: both, token: validHS[:len(validHS)-3], reason: ReasonBadSignature},
		{name: "four segments", v: both, token: validHS + ".x", reason: ReasonMalformed},
		{name: "garbage base64", v: both, token: "!!!.@@@.###", reason: ReasonMalformed},
		{name: "header not JSON", v: both, token: b64([]byte("nope")) + "." + parts[1] + "." + parts[2], reason: ReasonMalformed},
		{name: "payload not JSON", v: both, token: parts[0] + "." + b64([]byte("[1,2")) + "." + parts[2], reason: ReasonMalformed},
		{name: "padded base64", v: both, token: parts[0] + "==." + parts[1] + "." + parts[2], reason: ReasonMalformed},
		{name: "payload tampered", v: both, token: parts[0] + "." + b64([]byte(`{"sub":"mallory"}`)) + "." + parts[2], reason: ReasonBadSignature},
		{name: "10 KiB token", v: both, token: sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "pad", strings.Repeat("x", 10<<10))), reason: ReasonTooLong},
		{name: "10 KiB garbage", v: both, token: strings.Repeat("a", 10<<10), reason: ReasonTooLong},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.v.Verify(tc.token)
			wantReason(t, err, tc.reason)
			if tc.reason == "" && c.Subject != tc.sub {
				t.Fatalf("Subject = %q, want %q", c.Subject, tc.sub)
			}
			if err != nil && tc.token != "" && strings.Contains(errorText(err), tc.token) {
				t.Fatalf("error repeats the token")
			}
		})
	}
}

// reheader replaces the header of a token (its signature no longer fits).
func reheader(tok, header string) string {
	_, rest, _ := strings.Cut(tok, ".")
	return b64([]byte(header)) + "." + rest
}

// errorText is the text of err and of its cause.
func errorText(err error) string {
	s := err.Error()
	if c := errors.Unwrap(err); c != nil {
		s += " " + c.Error()
	}
	return s
}

// esNoKey is an ES512 token (P-521) without kid: the JWKS has no P-521 key.
func esNoKey(t *testing.T) string {
	t.Helper()
	k, err := ecdsaP521()
	if err != nil {
		t.Fatal(err)
	}
	return sign(t, jwt.SigningMethodES512, k, "", claims())
}

func TestVerifyClaims(t *testing.T) {
	v := newTestVerifier(t, Config{Secrets: []string{secretNew}})
	iat := time.Now().Add(-time.Minute).Truncate(time.Second)
	exp := iat.Add(time.Hour)
	nbf := iat.Add(-time.Second)
	tok := sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", jwt.MapClaims{
		"sub": "bob", "iat": iat.Unix(), "exp": exp.Unix(), "nbf": nbf.Unix(), "jti": "j-7",
	})
	c, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	want := Claims{Subject: "bob", ExpiresAt: exp, IssuedAt: iat, NotBefore: nbf, ID: "j-7"}
	if !c.ExpiresAt.Equal(want.ExpiresAt) || !c.IssuedAt.Equal(want.IssuedAt) || !c.NotBefore.Equal(want.NotBefore) || c.Subject != want.Subject || c.ID != want.ID {
		t.Fatalf("claims = %+v, want %+v", c, want)
	}

	// No exp, iat, nbf: zero times.
	c, err = v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", jwt.MapClaims{"sub": "bob"}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.ExpiresAt.IsZero() || !c.IssuedAt.IsZero() || !c.NotBefore.IsZero() || c.ID != "" {
		t.Fatalf("claims = %+v, want zero times", c)
	}
}

func TestDisabled(t *testing.T) {
	v := newTestVerifier(t, Config{Secrets: []string{""}})
	if v.Enabled() {
		t.Fatal("Enabled with no usable secret")
	}
	tok, err := Mint(secretNew, "alice", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(tok)
	wantReason(t, err, ReasonNotConfigured)

	if !newTestVerifier(t, Config{Secrets: []string{"s"}}).Enabled() {
		t.Fatal("not Enabled with a secret")
	}
	if !newTestVerifier(t, Config{JWKS: writeFile(t, standardJWKS())}).Enabled() {
		t.Fatal("not Enabled with a JWKS")
	}
}

func TestMintRoundTrip(t *testing.T) {
	v := newTestVerifier(t, Config{Secrets: []string{secretOld, secretNew}})
	before := time.Now().Truncate(time.Second)
	tok, err := Mint(secretNew, "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "alice" || c.ID == "" || c.IssuedAt.Before(before) {
		t.Fatalf("claims = %+v", c)
	}
	if d := c.ExpiresAt.Sub(c.IssuedAt); d != time.Hour {
		t.Fatalf("exp - iat = %v, want 1h", d)
	}

	// Random jti.
	tok2, err := Mint(secretNew, "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := v.Verify(tok2)
	if err != nil {
		t.Fatal(err)
	}
	if c2.ID == c.ID {
		t.Fatalf("jti repeated: %q", c.ID)
	}

	// ttl <= 0: no exp.
	tok, err = Mint(secretOld, "bob", 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err = v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "bob" || !c.ExpiresAt.IsZero() {
		t.Fatalf("claims = %+v, want no exp", c)
	}

	// Signed with a secret the verifier does not have.
	tok, err = Mint("unknown-secret-0123456789abcdef0123", "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(tok)
	wantReason(t, err, ReasonBadSignature)

	// Issuer and audience.
	sv := newTestVerifier(t, Config{Secrets: []string{secretNew}, Issuer: "kh", Audience: "rt"})
	tok, err = MintWith(secretNew, MintOptions{Subject: "carol", TTL: time.Minute, Issuer: "kh", Audience: "rt"})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := sv.Verify(tok); err != nil || c.Subject != "carol" {
		t.Fatalf("Verify = %+v, %v", c, err)
	}

	// Bad input.
	if _, err := Mint("", "alice", time.Hour); err == nil {
		t.Fatal("Mint with empty secret succeeded")
	}
	if _, err := Mint(secretNew, "", time.Hour); err == nil {
		t.Fatal("Mint with empty subject succeeded")
	}
	if _, err := Mint(secretNew, "a\x00b", time.Hour); err == nil {
		t.Fatal("Mint with control character in subject succeeded")
	}
}

func TestErrorUnwrap(t *testing.T) {
	v := newTestVerifier(t, Config{Secrets: []string{secretNew}})
	_, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", time.Now().Add(-time.Hour).Unix())))
	if !errors.Is(err, jwt.ErrTokenExpired) {
		t.Fatalf("errors.Is(err, jwt.ErrTokenExpired) = false for %v", err)
	}
}
