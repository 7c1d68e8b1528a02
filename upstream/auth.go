package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
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
	case basic:
		cred, err := c.credential(ctx, op)
		if err != nil || cred.Username == "" {
			return "", err
		}
		return basicAuth(cred), nil
	}
	return "", nil
}

// credential returns the upstream's credential (anonymous without one). A
// source that fails is ErrMisconfigured: nothing is sent.
func (c *Client) credential(ctx context.Context, op string) (Credential, error) {
	if c.creds == nil {
		return Credential{}, nil
	}
	cred, err := c.creds.Get(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Credential{}, c.ctxError(op, ctx)
		}
		c.log.Warn().Str("upstream", c.name).Str("reason", err.Error()).Msg("upstream credentials unavailable")
		return Credential{}, c.newError(op, ErrMisconfigured, "its credentials could not be obtained (see berth's log)", err)
	}
	return cred, nil
}

// renewCredential drops the credential the upstream rejected and reports
// whether its source now supplies a different one worth another try.
func (c *Client) renewCredential(ctx context.Context, rejected Credential) bool {
	if c.creds == nil {
		return false
	}
	c.creds.Forget()
	fresh, err := c.creds.Get(ctx)
	return err == nil && !fresh.anonymous() && fresh != rejected
}

// basicAuth returns the Basic Authorization header value.
func basicAuth(cred Credential) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(cred.Username+":"+cred.Password))
}

// handleChallenge reacts to a 401 answer to r, which was sent with the
// Authorization header value sent. On success the caller retries r;
// renewed reports that a rejected credential was replaced by a fresh one,
// which earns the request one more round.
func (c *Client) handleChallenge(ctx context.Context, r *request, hdr http.Header, sent string) (renewed bool, err error) {
	denied := func(msg string) error {
		return &Error{Upstream: c.name, Op: r.op, Status: http.StatusUnauthorized, Message: msg, Kind: ErrDenied}
	}
	challenges := parseChallenges(hdr.Values("Www-Authenticate"))
	if ch, ok := findChallenge(challenges, "bearer"); ok {
		realm, err := c.parseRealm(ch.params["realm"])
		var refused realmRefused
		if err != nil && !errors.As(err, &refused) {
			return false, c.newError(r.op, ErrUnexpectedResponse, "invalid Bearer challenge", err)
		}
		if err != nil {
			c.log.Warn().Str("upstream", c.name).Str("reason", err.Error()).
				Msg("refusing the upstream's token realm; nothing was sent there")
			return false, c.newError(r.op, ErrMisconfigured,
				"its token realm is on a host berth may not send credentials to (see berth's log)", err)
		}
		bc := bearerChallenge{realm: realm, service: ch.params["service"]}
		c.auth.mu.Lock()
		c.auth.bearer = &bc
		c.auth.mu.Unlock()
		stale := strings.TrimPrefix(sent, "Bearer ")
		_, err = c.fetchToken(ctx, r.op, bc, r.scope, ch.params["scope"], stale)
		return false, err
	}
	if _, ok := findChallenge(challenges, "basic"); ok {
		cred, err := c.credential(ctx, r.op)
		if err != nil {
			return false, err
		}
		if cred.Username == "" {
			return false, denied("upstream requires Basic authentication but no credentials are configured")
		}
		if strings.HasPrefix(sent, "Basic ") {
			if sent == basicAuth(cred) && c.renewCredential(ctx, cred) {
				return true, nil
			}
			return false, denied("berth's credentials for it were rejected")
		}
		c.auth.mu.Lock()
		c.auth.useBasic = true
		c.auth.mu.Unlock()
		return false, nil
	}
	return false, denied("no supported WWW-Authenticate challenge")
}

// parseRealm validates a token realm. Credentials are sent to the realm, so
// it must be an absolute URL on the registry's own host or one listed in
// Config.TokenRealms, over https unless the registry itself is plain http.
// The error says why, naming the realm's host (for the log).
func (c *Client) parseRealm(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errString("the challenge names no realm")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, errString("the realm is not an absolute http(s) URL")
	}
	if u.User != nil {
		return nil, errString("the realm URL carries credentials")
	}
	if u.Scheme == "http" && c.base.Scheme == "https" {
		return nil, realmRefused("realm " + u.Host + " is plain http and the registry is https")
	}
	if !c.realmAllowed(u) {
		return nil, realmRefused("realm host " + u.Host + " is neither the registry's host nor listed in token_realms")
	}
	return u, nil
}

// realmRefused is a well-formed realm berth may not send credentials to.
type realmRefused string

func (e realmRefused) Error() string { return string(e) }

// realmAllowed reports whether u's host may receive credentials: the
// registry's own host name (any port), or a token_realms entry (a host
// name, any port; host:port, that port only).
func (c *Client) realmAllowed(u *url.URL) bool {
	host := u.Hostname()
	if strings.EqualFold(host, c.base.Hostname()) {
		return true
	}
	for _, r := range c.realms {
		if _, _, err := net.SplitHostPort(r); err == nil {
			if strings.EqualFold(r, u.Host) {
				return true
			}
		} else if strings.EqualFold(strings.Trim(r, "[]"), host) {
			return true
		}
	}
	return false
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

// requestToken asks the token service for a token valid for the scopes:
// a GET with Basic credentials (or none), or, with an identity token, the
// OAuth2 refresh-token POST docker uses. Credentials the service rejects
// are asked for again once, if their source has fresher ones.
func (c *Client) requestToken(ctx context.Context, bc bearerChallenge, scope, extraScope string) (string, time.Duration, error) {
	op := "GET token from " + bc.realm.Host
	cred, err := c.credential(ctx, op)
	if err != nil {
		return "", 0, err
	}
	for renewals := 0; ; renewals++ {
		tok, ttl, err := c.tokenRequest(ctx, op, bc, scope, extraScope, cred)
		if err == nil || !errors.Is(err, ErrDenied) || cred.anonymous() || renewals > 0 || !c.renewCredential(ctx, cred) {
			return tok, ttl, err
		}
		if cred, err = c.credential(ctx, op); err != nil {
			return "", 0, err
		}
	}
}

// tokenRequest is one token request with cred.
func (c *Client) tokenRequest(ctx context.Context, op string, bc bearerChallenge, scope, extraScope string, cred Credential) (string, time.Duration, error) {
	u := *bc.realm
	q := u.Query()
	form := url.Values{}
	set := func(k, v string) {
		if cred.IdentityToken != "" {
			form.Add(k, v)
		} else {
			q.Add(k, v)
		}
	}
	if bc.service != "" {
		set("service", bc.service)
	}
	if scope != "" {
		set("scope", scope)
	}
	if extraScope != "" && extraScope != scope {
		set("scope", extraScope)
	}
	method := http.MethodGet
	if cred.IdentityToken != "" {
		method = http.MethodPost
		form.Set("grant_type", "refresh_token")
		form.Set("refresh_token", cred.IdentityToken)
		form.Set("client_id", "berth")
	}
	u.RawQuery = q.Encode()
	c.log.Debug().Str("upstream", c.name).Str("realm", bc.realm.Host).Str("scope", scope).
		Bool("credentials", !cred.anonymous()).Msg("fetching registry token")

	resp, err := c.roundTrip(ctx, op, func(ctx context.Context) (*http.Request, error) {
		var body io.Reader
		if method == http.MethodPost {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
		if err != nil {
			return nil, err
		}
		if method == http.MethodPost {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		} else if cred.Username != "" {
			req.SetBasicAuth(cred.Username, cred.Password)
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
