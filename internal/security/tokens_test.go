package security_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// Issuer and audience of the JWKS nodes.
const (
	testIssuer   = "https://idp.example"
	testAudience = "knowledgehub"
)

// idpKeys are the identity provider's key pairs, made once per test binary,
// and an attacker's RSA key of the same size.
type idpKeys struct {
	rsa    *rsa.PrivateKey
	ec     *ecdsa.PrivateKey
	forger *rsa.PrivateKey
}

var keys = sync.OnceValue(func() idpKeys {
	var k idpKeys
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if k.forger, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	return k
})

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// writeJWKS writes the public keys as a JWKS file (built by hand, not with
// the library under test): "rsa" (RS256) and "ec" (ES256).
func writeJWKS(t testing.TB) string {
	t.Helper()
	k := keys()
	ecRaw, err := k.ec.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	size := (len(ecRaw) - 1) / 2
	doc := map[string]any{"keys": []any{
		map[string]any{"kty": "RSA", "kid": "rsa", "use": "sig", "alg": "RS256",
			"n": b64(k.rsa.PublicKey.N.Bytes()), "e": b64(big.NewInt(int64(k.rsa.PublicKey.E)).Bytes())},
		map[string]any{"kty": "EC", "kid": "ec", "use": "sig", "alg": "ES256", "crv": "P-256",
			"x": b64(ecRaw[1 : 1+size]), "y": b64(ecRaw[1+size:])},
	}}
	b, _ := json.Marshal(doc)
	p := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rsaPublicPEM is the RSA public key as an attacker finds it published.
func rsaPublicPEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(&keys().rsa.PublicKey)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// idpClaims are valid claims for the JWKS nodes, changed by mod.
func idpClaims(mod func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{"sub": "alice", "iss": testIssuer, "aud": testAudience,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	if mod != nil {
		mod(c)
	}
	return c
}

// hsClaims are valid claims for the default nodes (HS256, no iss/aud).
func hsClaims(mod func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{"sub": "alice", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	if mod != nil {
		mod(c)
	}
	return c
}

func sign(t testing.TB, m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return s
}

// mintToken is an HS256 token for user valid for an hour.
func mintToken(user string) string {
	tok, err := auth.Mint(servertest.Secret, user, time.Hour)
	if err != nil {
		panic(err)
	}
	return tok
}

func hs(t testing.TB, c jwt.MapClaims) string {
	return sign(t, jwt.SigningMethodHS256, []byte(servertest.Secret), "", c)
}

func rs(t testing.TB, c jwt.MapClaims) string {
	return sign(t, jwt.SigningMethodRS256, keys().rsa, "rsa", c)
}

// tokenSet are the hostile tokens, by name.
type tokenSet map[string]string

func makeTokens(t testing.TB) tokenSet {
	k := keys()
	ts := tokenSet{}
	// HS256 node (jwt_secret).
	ts["hs-valid"] = hs(t, hsClaims(nil))
	ts["hs-none"] = sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", hsClaims(nil))
	ts["hs-expired"] = hs(t, hsClaims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
	ts["hs-nbf"] = hs(t, hsClaims(func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Hour).Unix() }))
	ts["hs-iat-future"] = hs(t, hsClaims(func(c jwt.MapClaims) { c["iat"] = time.Now().Add(time.Hour).Unix() }))
	ts["hs-wrong-secret"] = sign(t, jwt.SigningMethodHS256, []byte("not-the-secret-0123456789abcdef012345"), "", hsClaims(nil))
	ts["hs-no-sub"] = hs(t, hsClaims(func(c jwt.MapClaims) { delete(c, "sub") }))
	ts["hs-ctl-sub"] = hs(t, hsClaims(func(c jwt.MapClaims) { c["sub"] = "alice\nevent: x" }))
	ts["hs-rs256"] = rs(t, hsClaims(nil)) // RS256 on a node without a JWKS
	valid := ts["hs-valid"]
	ts["hs-truncated"] = valid[:len(valid)-11] // 32 base64 characters: decodes, too short
	ts["hs-two-segments"] = valid[:strings.LastIndexByte(valid, '.')]
	ts["huge"] = "eyJhbGciOiJIUzI1NiJ9." + strings.Repeat("A", 9<<10) + ".sig"
	ts["garbage"] = "not-a-jwt"
	ts["crlf"] = "abc\r\nevent: injected"

	// JWKS node (RSA + EC keys, iss and aud required, no secret).
	ts["rs-valid"] = rs(t, idpClaims(nil))
	ts["rs-none"] = sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "rsa", idpClaims(nil))
	ts["rs-hs-confusion"] = sign(t, jwt.SigningMethodHS256, rsaPublicPEM(), "rsa", idpClaims(nil))
	ts["rs-unknown-kid"] = sign(t, jwt.SigningMethodRS256, k.rsa, "kid-nobody-published", idpClaims(nil))
	ts["rs-forged"] = sign(t, jwt.SigningMethodRS256, k.forger, "rsa", idpClaims(nil))
	ts["rs-expired"] = rs(t, idpClaims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
	ts["rs-nbf"] = rs(t, idpClaims(func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Hour).Unix() }))
	ts["rs-wrong-iss"] = rs(t, idpClaims(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }))
	ts["rs-no-iss"] = rs(t, idpClaims(func(c jwt.MapClaims) { delete(c, "iss") }))
	ts["rs-wrong-aud"] = rs(t, idpClaims(func(c jwt.MapClaims) { c["aud"] = "someone-else" }))
	ts["rs-es256-with-rsa-kid"] = sign(t, jwt.SigningMethodES256, k.ec, "rsa", idpClaims(nil))
	ts["es-valid"] = sign(t, jwt.SigningMethodES256, k.ec, "ec", idpClaims(nil))
	rsValid := ts["rs-valid"]
	ts["rs-truncated"] = rsValid[:len(rsValid)-10]
	ts["rs-alg-swap-ps256"] = swapAlg(rsValid, "PS256")
	// Mixed node (secret and JWKS): the HS256 confusion token must be
	// checked against the secret only.
	ts["mixed-hs-confusion"] = sign(t, jwt.SigningMethodHS256, rsaPublicPEM(), "rsa", hsClaims(nil))
	return ts
}

// swapAlg rewrites the header's alg and keeps payload and signature.
func swapAlg(tok, alg string) string {
	parts := strings.Split(tok, ".")
	h, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var m map[string]any
	_ = json.Unmarshal(h, &m)
	m["alg"] = alg
	nb, _ := json.Marshal(m)
	parts[0] = b64(nb)
	return strings.Join(parts, ".")
}
