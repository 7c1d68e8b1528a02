// Package token issues and verifies the bearer tokens of berth's own Docker
// token endpoint: short-lived JWTs (HS256) that carry the user, the user's
// groups and the scopes granted, and long-lived refresh tokens for
// `docker login`. Only berth reads its tokens, so a shared-secret MAC is
// enough, and a verification is a few microseconds with no lock and no disk
// read: the key is held in memory from start.
package token

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/internal/access"
	"github.com/golang-jwt/jwt/v5"
)

// Claims are what a token says.
type Claims struct {
	jwt.RegisteredClaims
	// Groups are the subject's groups when the token was issued.
	Groups []string `json:"groups,omitempty"`
	// Access are the scopes granted (access tokens only).
	Access []access.Scope `json:"access,omitempty"`
	// Kind is "access" or "refresh": a refresh token is never accepted
	// as an access token, nor the other way round.
	Kind string `json:"kind"`
}

// Identity is the claims' subject as an access.Identity.
func (c *Claims) Identity() access.Identity {
	return access.Identity{User: c.Subject, Groups: c.Groups}
}

const (
	kindAccess  = "access"
	kindRefresh = "refresh"
	issuer      = "berth"
	keyBytes    = 32
)

// Issuer signs and verifies tokens with one key.
type Issuer struct {
	key        []byte
	service    string
	ttl        time.Duration
	refreshTTL time.Duration
	now        func() time.Time
	parser     *jwt.Parser
	// verified remembers recently verified access tokens in a
	// direct-mapped table of atomic pointers: a client sends the same token
	// with every request of a pull, and a hit costs a hash and a compare
	// instead of a MAC and a JSON decode, with no lock.
	verified [verifiedSlots]atomic.Pointer[verifiedToken]
	seed     maphash.Seed
}

const verifiedSlots = 1024

type verifiedToken struct {
	tok    string
	claims *Claims
}

// Options configure an Issuer.
type Options struct {
	Key        []byte        // at least 32 bytes
	Service    string        // the aud of every token, and the challenge's service
	TTL        time.Duration // of access tokens; zero means 5 minutes
	RefreshTTL time.Duration // of refresh tokens; zero means 30 days
	Now        func() time.Time
}

// New returns an Issuer.
func New(o Options) (*Issuer, error) {
	if len(o.Key) < keyBytes {
		return nil, fmt.Errorf("token key: %d bytes, want at least %d", len(o.Key), keyBytes)
	}
	if o.TTL == 0 {
		o.TTL = 5 * time.Minute
	}
	if o.RefreshTTL == 0 {
		o.RefreshTTL = 30 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Issuer{key: o.Key, service: o.Service, ttl: o.TTL, refreshTTL: o.RefreshTTL, now: o.Now,
		seed: maphash.MakeSeed(),
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithAudience(o.Service),
			jwt.WithIssuer(issuer), jwt.WithExpirationRequired(), jwt.WithTimeFunc(o.Now), jwt.WithLeeway(5*time.Second))}, nil
}

// Service is the service name tokens are issued for.
func (is *Issuer) Service() string { return is.service }

// TTL is how long an access token lives.
func (is *Issuer) TTL() time.Duration { return is.ttl }

// Access issues an access token granting scopes to id.
func (is *Issuer) Access(id access.Identity, scopes []access.Scope) (tok string, issued time.Time, err error) {
	return is.sign(id, scopes, kindAccess, is.ttl)
}

// Refresh issues a refresh token for an authenticated user.
func (is *Issuer) Refresh(id access.Identity) (string, error) {
	if id.Anonymous() {
		return "", errors.New("no refresh token for anonymous clients")
	}
	tok, _, err := is.sign(id, nil, kindRefresh, is.refreshTTL)
	return tok, err
}

func (is *Issuer) sign(id access.Identity, scopes []access.Scope, kind string, ttl time.Duration) (string, time.Time, error) {
	now := is.now()
	var jti [12]byte
	_, _ = rand.Read(jti[:])
	c := Claims{RegisteredClaims: jwt.RegisteredClaims{Issuer: issuer, Subject: id.User, Audience: jwt.ClaimStrings{is.service},
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)), NotBefore: jwt.NewNumericDate(now), IssuedAt: jwt.NewNumericDate(now),
		ID: hex.EncodeToString(jti[:])}, Groups: id.Groups, Access: scopes, Kind: kind}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(is.key)
	return s, now, err
}

// ErrInvalid is returned for a token that is malformed, forged, expired or
// of the wrong kind.
var ErrInvalid = errors.New("invalid token")

// Verify checks an access token and returns its claims, which the caller
// must not modify.
func (is *Issuer) Verify(tok string) (*Claims, error) {
	slot := &is.verified[maphash.String(is.seed, tok)%verifiedSlots]
	if v := slot.Load(); v != nil && v.tok == tok {
		if is.now().Before(v.claims.ExpiresAt.Time) {
			return v.claims, nil
		}
		return nil, fmt.Errorf("%w: token is expired", ErrInvalid)
	}
	c, err := is.verify(tok, kindAccess)
	if err == nil {
		slot.Store(&verifiedToken{tok, c})
	}
	return c, err
}

// VerifyRefresh checks a refresh token and returns its claims.
func (is *Issuer) VerifyRefresh(tok string) (*Claims, error) { return is.verify(tok, kindRefresh) }

func (is *Issuer) verify(tok, kind string) (*Claims, error) {
	var c Claims
	_, err := is.parser.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return is.key, nil })
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if c.Kind != kind {
		return nil, fmt.Errorf("%w: a %s token where a %s token is wanted", ErrInvalid, c.Kind, kind)
	}
	return &c, nil
}

// LoadKey reads the key file at path, creating it with a new random key
// (mode 0600, in a directory made 0700) when create is set and it does not
// exist. The file holds the key in hex.
func LoadKey(path string, create bool) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		return newKey(path)
	}
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) < keyBytes {
		return nil, fmt.Errorf("%s: want at least %d random bytes in hex (openssl rand -hex 32)", path, keyBytes)
	}
	return key, nil
}

func newKey(path string) ([]byte, error) {
	key := make([]byte, keyBytes)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	// Link, not rename: two berths starting at once on one data
	// directory keep whichever key was written first.
	err := os.Link(tmp, path)
	_ = os.Remove(tmp)
	if errors.Is(err, os.ErrExist) {
		return LoadKey(path, false)
	}
	if err != nil {
		return nil, err
	}
	return key, nil
}
