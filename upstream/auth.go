package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultTokenTTL is assumed when a token response has no expires_in, as the
// distribution token specification prescribes.
const DefaultTokenTTL = 60 * time.Second

// maxTokenMargin bounds how long before its expiry a token stops being
// used, so that a request does not race the token's expiry in flight.
const maxTokenMargin = 10 * time.Second

// maxTokenBody bounds the token response read into memory.
const maxTokenBody = 1 << 20

// maxTokenScopes bounds the token cache. A mirror asks for one scope per
// repository it pulls, so without a bound the cache would grow with every
// repository ever pulled; the least recently used scope makes room.
const maxTokenScopes = 1024

// authState is the per-client authentication state learned from the upstream.
type authState struct {
	mu       sync.Mutex
	tokens   *lru.Cache[string, cachedToken] // by scope ("" = registry-wide)
	flights  map[string]*tokenFlight         // token fetches in progress, by scope
	bearer   *bearerChallenge                // last Bearer challenge seen, for proactive token fetches
	useBasic bool                            // the upstream asked for Basic credentials
}

// newTokenCache returns an empty token cache holding at most size scopes.
func newTokenCache(size int) *lru.Cache[string, cachedToken] {
	tc, err := lru.New[string, cachedToken](size)
	if err != nil {
		panic(err) // only for size <= 0, a programming error
	}
	return tc
}

// cachedToken is a bearer token and the time after which it is not used.
type cachedToken struct {
	value  string
	expiry time.Time
}

// bearerChallenge is what a Bearer WWW-Authenticate challenge tells us
// about the token service.
type bearerChallenge struct {
	realm   *url.URL
	service string
}

// tokenFlight is one token fetch in progress; every caller that needs the
// scope meanwhile waits for it instead of fetching again.
type tokenFlight struct {
	done chan struct{} // closed when tok and err are set
	tok  string
	err  error
}

// token returns the cached, unexpired token for scope.
func (c *Client) token(scope string) (string, bool) {
	c.auth.mu.Lock()
	defer c.auth.mu.Unlock()
	return c.tokenLocked(scope)
}

// tokenLocked is token with c.auth.mu held. An expired token is dropped
// when it is looked up: there is no janitor goroutine.
func (c *Client) tokenLocked(scope string) (string, bool) {
	t, ok := c.auth.tokens.Get(scope)
	if !ok {
		return "", false
	}
	if !c.now().Before(t.expiry) {
		c.auth.tokens.Remove(scope)
		return "", false
	}
	return t.value, true
}

// storeToken caches tok for scope until expiry, first dropping expired
// tokens from the least recently used end, so that scopes nobody asks for
// again leave before live ones are evicted.
func (c *Client) storeToken(scope, tok string, expiry time.Time) {
	c.auth.mu.Lock()
	defer c.auth.mu.Unlock()
	now := c.now()
	for {
		k, t, ok := c.auth.tokens.GetOldest()
		if !ok || now.Before(t.expiry) {
			break
		}
		c.auth.tokens.Remove(k)
	}
	c.auth.tokens.Add(scope, cachedToken{value: tok, expiry: expiry})
}

// authorization returns the Authorization header value to send proactively
// for scope: a cached token; or, when the upstream is known to use Bearer
// auth, a freshly fetched token (saving the 401 round trip); or Basic
// credentials when the upstream asked for them before.
func (c *Client) authorization(ctx context.Context, op, scope string) (string, error) {
	if tok, ok := c.token(scope); ok {
		return "Bearer " + tok, nil
	}
	c.auth.mu.Lock()
	bc, basic := c.auth.bearer, c.auth.useBasic
	c.auth.mu.Unlock()
	switch {
	case bc != nil:
		tok, err := c.fetchToken(ctx, op, *bc, scope, "", "")
		if err != nil {
			return "", err
		}
		return "Bearer " + tok, nil
	case basic && c.username != "":
		return c.basicAuth(), nil
	}
	return "", nil
}

// basicAuth returns the Basic Authorization header value.
func (c *Client) basicAuth() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.username+":"+c.password))
}

// handleChallenge reacts to a 401 answer to r, which was sent with the
// Authorization header value sent. On success the caller retries r.
func (c *Client) handleChallenge(ctx context.Context, r *request, hdr http.Header, sent string) error {
	denied := func(msg string) error {
		return &Error{Upstream: c.name, Op: r.op, Status: http.StatusUnauthorized, Message: msg, Kind: ErrDenied}
	}
	challenges := parseChallenges(hdr.Values("Www-Authenticate"))
	if ch, ok := findChallenge(challenges, "bearer"); ok {
		realm, err := c.parseRealm(ch.params["realm"])
		if err != nil {
			return c.newError(r.op, ErrUnexpectedResponse, "invalid Bearer challenge", err)
		}
		bc := bearerChallenge{realm: realm, service: ch.params["service"]}
		c.auth.mu.Lock()
		c.auth.bearer = &bc
		c.auth.mu.Unlock()
		stale := strings.TrimPrefix(sent, "Bearer ")
		_, err = c.fetchToken(ctx, r.op, bc, r.scope, ch.params["scope"], stale)
		return err
	}
	if _, ok := findChallenge(challenges, "basic"); ok {
		if c.username == "" {
			return denied("upstream requires Basic authentication but no credentials are configured")
		}
		if strings.HasPrefix(sent, "Basic ") {
			return denied("credentials rejected")
		}
		c.auth.mu.Lock()
		c.auth.useBasic = true
		c.auth.mu.Unlock()
		return nil
	}
	return denied("no supported WWW-Authenticate challenge")
}

// parseRealm validates a token realm. Credentials are sent to the realm, so
// it must be an absolute http(s) URL, and not plain http when the registry
// itself is reached over https.
func (c *Client) parseRealm(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errString("missing realm")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, errString("realm is not an absolute http(s) URL")
	}
	if u.Scheme == "http" && c.base.Scheme == "https" {
		return nil, errString("refusing plain-http realm for an https registry")
	}
	return u, nil
}

// errString is a constant-message error.
type errString string

func (e errString) Error() string { return string(e) }

// fetchToken returns a token for scope, fetching it from the realm unless a
// cached one other than stale exists (stale is the token the upstream just
// rejected, if any). extraScope is a scope demanded by the challenge in
// addition to ours. Concurrent fetches for one scope share one request.
//
// The fetch runs in a goroutine detached from the caller's cancellation,
// since other callers may be waiting on it; c.detached owns it and
// Config.OperationTimeout bounds it, so it ends on its own soon after a
// caller that gave up has returned.
func (c *Client) fetchToken(ctx context.Context, op string, bc bearerChallenge, scope, extraScope, stale string) (string, error) {
	if ctx.Err() != nil {
		return "", c.ctxError(op, ctx) // no detached fetch for a caller already gone
	}
	c.auth.mu.Lock()
	if tok, ok := c.tokenLocked(scope); ok && tok != stale {
		c.auth.mu.Unlock()
		return tok, nil
	}
	f, ok := c.auth.flights[scope]
	if !ok {
		f = &tokenFlight{done: make(chan struct{})}
		c.auth.flights[scope] = f
		fctx, cancel := c.withOperationDeadline(context.WithoutCancel(ctx))
		c.detached.Go(func() {
			defer cancel()
			c.runTokenFlight(fctx, f, bc, scope, extraScope)
		})
	}
	c.auth.mu.Unlock()
	select {
	case <-ctx.Done():
		return "", c.ctxError(op, ctx)
	case <-f.done:
		return f.tok, f.err
	}
}

// runTokenFlight fetches the token for flight f, caches it, and releases
// f's waiters.
func (c *Client) runTokenFlight(ctx context.Context, f *tokenFlight, bc bearerChallenge, scope, extraScope string) {
	tok, ttl, err := c.requestToken(ctx, bc, scope, extraScope)
	if err == nil {
		margin := min(maxTokenMargin, ttl/10)
		c.storeToken(scope, tok, c.now().Add(ttl-margin))
	}
	c.auth.mu.Lock()
	delete(c.auth.flights, scope)
	c.auth.mu.Unlock()
	f.tok, f.err = tok, err
	close(f.done)
}

// tokenResponse is the token service's answer; Docker Hub sends "token",
// OAuth2-style services send "access_token".
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
}

// requestToken asks the token service for a token valid for the scopes.
func (c *Client) requestToken(ctx context.Context, bc bearerChallenge, scope, extraScope string) (string, time.Duration, error) {
	op := "GET token from " + bc.realm.Host
	u := *bc.realm
	q := u.Query()
	if bc.service != "" {
		q.Set("service", bc.service)
	}
	if scope != "" {
		q.Add("scope", scope)
	}
	if extraScope != "" && extraScope != scope {
		q.Add("scope", extraScope)
	}
	u.RawQuery = q.Encode()
	c.log.Debug().Str("upstream", c.name).Str("realm", bc.realm.Host).Str("scope", scope).
		Bool("credentials", c.username != "").Msg("fetching registry token")

	resp, err := c.roundTrip(ctx, op, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		if c.username != "" {
			req.SetBasicAuth(c.username, c.password)
		}
		return req, nil
	})
	if err != nil {
		return "", 0, err
	}
	if resp.StatusCode != http.StatusOK {
		e := c.statusError(op, resp)
		if e.Kind == ErrDenied && e.Message == "" {
			e.Message = "token service rejected the request"
		}
		return "", 0, e
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBody))
	if err != nil {
		return "", 0, c.bodyError(ctx, op, err)
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		// The JSON error might quote part of the body, which could hold
		// a token: do not wrap it.
		return "", 0, c.newError(op, ErrUnexpectedResponse, "malformed token response", nil)
	}
	tok := tr.Token
	if tok == "" {
		tok = tr.AccessToken
	}
	if tok == "" {
		return "", 0, c.newError(op, ErrUnexpectedResponse, "token response has no token", nil)
	}
	ttl := DefaultTokenTTL
	if tr.ExpiresIn > 0 {
		ttl = time.Duration(tr.ExpiresIn) * time.Second
	}
	return tok, ttl, nil
}

// challenge is one parsed WWW-Authenticate challenge.
type challenge struct {
	scheme string            // lower-cased
	params map[string]string // keys lower-cased
}

// findChallenge returns the first challenge with the given (lower-case)
// scheme.
func findChallenge(chs []challenge, scheme string) (challenge, bool) {
	for _, ch := range chs {
		if ch.scheme == scheme {
			return ch, true
		}
	}
	return challenge{}, false
}

// parseChallenges parses WWW-Authenticate header values (RFC 7235): each
// value may hold several challenges, parameters may be quoted strings that
// contain commas, spaces and backslash escapes. Malformed input yields
// whatever could be parsed rather than an error: the caller only needs
// realm/service/scope.
func parseChallenges(values []string) []challenge {
	var out []challenge
	for _, s := range values {
		p := challengeParser{s: s}
		for {
			p.skip(" \t,")
			if p.done() {
				break
			}
			tok := p.token()
			if tok == "" {
				p.i++ // unexpected character; skip it
				continue
			}
			p.skip(" \t")
			if !p.done() && p.s[p.i] == '=' {
				if p.isToken68Tail() {
					// "Basic dXNlcg==": a token68 credential, not a parameter.
					p.skip("=")
					continue
				}
				p.i++
				p.skip(" \t")
				v := p.value()
				if len(out) > 0 {
					out[len(out)-1].params[strings.ToLower(tok)] = v
				}
				continue
			}
			out = append(out, challenge{scheme: strings.ToLower(tok), params: map[string]string{}})
		}
	}
	return out
}

// challengeParser is a cursor over one WWW-Authenticate value.
type challengeParser struct {
	s string
	i int
}

func (p *challengeParser) done() bool { return p.i >= len(p.s) }

func (p *challengeParser) skip(chars string) {
	for !p.done() && strings.IndexByte(chars, p.s[p.i]) >= 0 {
		p.i++
	}
}

// token reads an RFC 7230 token.
func (p *challengeParser) token() string {
	start := p.i
	for !p.done() && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// isToken68Tail reports whether the '=' at the cursor ends a token68 value
// (e.g. "Basic dXNlcg==") rather than starting a parameter value.
func (p *challengeParser) isToken68Tail() bool {
	j := p.i
	for j < len(p.s) && p.s[j] == '=' {
		j++
	}
	return j-p.i > 1 || j == len(p.s) || p.s[j] == ','
}

// value reads a parameter value: a quoted string or a token.
func (p *challengeParser) value() string {
	if p.done() || p.s[p.i] != '"' {
		start := p.i
		for !p.done() && p.s[p.i] != ',' && p.s[p.i] != ' ' && p.s[p.i] != '\t' {
			p.i++
		}
		return p.s[start:p.i]
	}
	p.i++ // opening quote
	var b strings.Builder
	for !p.done() {
		ch := p.s[p.i]
		p.i++
		switch {
		case ch == '\\' && !p.done():
			b.WriteByte(p.s[p.i])
			p.i++
		case ch == '"':
			return b.String()
		default:
			b.WriteByte(ch)
		}
	}
	return b.String() // unterminated: take the rest
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
