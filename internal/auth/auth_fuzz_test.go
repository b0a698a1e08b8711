package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/event"
)

// FuzzVerify feeds arbitrary strings to a verifier with HMAC secrets and a
// JWKS of RSA, ECDSA and Ed25519 keys. It must never panic; a rejection is
// always an *Error with a known reason whose text does not repeat the token;
// an accepted token always has a valid, non-empty subject.
func FuzzVerify(f *testing.F) {
	k := keys()
	v, err := New(context.Background(), Config{
		Secrets:  []string{secretNew, secretOld},
		JWKS:     writeFile(f, standardJWKS()),
		Issuer:   "",
		Audience: "",
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(v.Close)

	now := time.Now()
	valid := []string{
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", claims()),
		sign(f, jwt.SigningMethodHS512, []byte(secretOld), "", claims()),
		sign(f, jwt.SigningMethodRS256, k.rsa, "rsa", claims()),
		sign(f, jwt.SigningMethodPS256, k.rsa, "", claims()),
		sign(f, jwt.SigningMethodES256, k.ec, "ec", claims()),
		sign(f, jwt.SigningMethodEdDSA, k.ed, "ed", claims()),
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", jwt.MapClaims{"sub": "bob"}),
	}
	for _, s := range valid {
		f.Add(s)
		f.Add(s[:len(s)/2])
		f.Add(s + "x")
		f.Add(strings.Replace(s, ".", "..", 1))
	}
	for _, s := range []string{
		"",
		".",
		"..",
		"a.b.c",
		"!!!.@@@.###",
		"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
		sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims()),
		sign(f, jwt.SigningMethodHS256, []byte("wrong-secret-0123456789abcdef012345"), "", claims()),
		sign(f, jwt.SigningMethodHS256, k.rsa.N.Bytes(), "rsa", claims()),
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", now.Add(-time.Hour).Unix())),
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "exp", 1e300)),
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "nbf", -1e300)),
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", nil)),
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "sub", "\x00")),
		sign(f, jwt.SigningMethodHS256, []byte(secretNew), "", with(claims(), "aud", []any{1, 2})),
		sign(f, jwt.SigningMethodRS256, k.rsa, "unknown", claims()),
		sign(f, jwt.SigningMethodES256, k.ec, "rsa", claims()),
		b64([]byte(`{"alg":"RS256","kid":{"a":1}}`)) + "." + b64([]byte(`{"sub":"x"}`)) + ".AAAA",
		b64([]byte(`{"alg":"HS256","crit":["b64"]}`)) + "." + b64([]byte(`{"sub":"x"}`)) + ".AAAA",
		strings.Repeat("A", MaxTokenBytes+1),
	} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token)
		if err == nil {
			if c.Subject == "" || !event.ValidUserID(c.Subject) {
				t.Fatalf("accepted token with subject %q", c.Subject)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %T %v is not an *Error", err, err)
		}
		if e.Reason == "" {
			t.Fatal("empty reason")
		}
		if len(token) >= 16 && strings.Contains(errorText(err), token) {
			t.Fatalf("error repeats the token: %v", errorText(err))
		}
	})
}
