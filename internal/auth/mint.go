package auth

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/event"
)

// MintOptions describe a development token for MintWith.
type MintOptions struct {
	// Subject is "sub", the user id. Required.
	Subject string
	// TTL sets "exp" to now+TTL; zero or less: no "exp" (never expires).
	TTL time.Duration
	// Issuer and Audience set "iss" and "aud" when not empty, for a server
	// configured with jwt_issuer or jwt_audience.
	Issuer   string
	Audience string
}

// Mint returns an HS256 token signed with secret, carrying sub, iat, a
// random jti and, when ttl > 0, exp = now+ttl (ttl <= 0: no exp).
func Mint(secret, subject string, ttl time.Duration) (string, error) {
	return MintWith(secret, MintOptions{Subject: subject, TTL: ttl})
}

// MintWith is Mint with an optional issuer and audience.
func MintWith(secret string, o MintOptions) (string, error) {
	if secret == "" {
		return "", errors.New("mint token: empty secret")
	}
	if !event.ValidUserID(o.Subject) {
		return "", fmt.Errorf("mint token: subject %q: must be 1 to 256 bytes of UTF-8 without control characters", o.Subject)
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("mint token: random jti: %w", err)
	}
	now := time.Now()
	c := jwt.RegisteredClaims{
		Subject:  o.Subject,
		Issuer:   o.Issuer,
		IssuedAt: jwt.NewNumericDate(now),
		ID:       hex.EncodeToString(jti[:]),
	}
	if o.Audience != "" {
		c.Audience = jwt.ClaimStrings{o.Audience}
	}
	if o.TTL > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(o.TTL))
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("mint token: sign: %w", err)
	}
	return s, nil
}

// JTIHash is the 64-bit FNV-1a hash of a jti; 0 for no jti. Live
// connections keep it instead of the jti, so revocations can find them.
func JTIHash(jti string) uint64 {
	if jti == "" {
		return 0
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(jti); i++ {
		h ^= uint64(jti[i])
		h *= 1099511628211
	}
	return h
}
