package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/token"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"
)

// Auth is client authentication and access control. Identities come from
// an htpasswd file of bcrypt hashes and, optionally, a Directory (LDAP);
// access rules decide what each identity may do (without rules an
// authenticated client may do anything and an anonymous one pull if
// anonymous pulls are on). With a token Issuer, clients are challenged with
// Bearer and get tokens from berth's own token endpoint (/v2/token);
// without one, Basic credentials come with every request. Client
// credentials are only ever checked here: they are never sent upstream.
type Auth struct {
	users map[string][]byte // user -> bcrypt hash
	// ok remembers recent successful checks, since bcrypt costs tens of
	// milliseconds and a push is dozens of requests.
	ok *expirable.LRU[[32]byte, struct{}]
	// dummy is checked for unknown users, so that a wrong user name takes
	// as long as a wrong password (no user enumeration by timing). It has
	// the highest cost found in the file.
	dummy  []byte
	dir    Directory
	policy *access.Policy
	tokens *token.Issuer
	realm  string // configured token realm; "" builds it from the request
	failed *loginLimits
}

// Directory is a second source of identities (an LDAP directory).
type Directory interface {
	// Check verifies a password; a wrong one is an error matching
	// ErrInvalidCredentials.
	Check(ctx context.Context, user, password string) (access.Identity, error)
	// Lookup returns a user's current identity without a password (when a
	// refresh token is redeemed).
	Lookup(ctx context.Context, user string) (access.Identity, error)
}

// ErrInvalidCredentials is a wrong user name or password; a Directory's
// errors for those match it.
var ErrInvalidCredentials = errors.New("invalid credentials")

// AuthOptions configure NewAuth.
type AuthOptions struct {
	// Htpasswd is the content of an htpasswd file; nil for none.
	Htpasswd io.Reader
	// Directory, if set, is asked for users the htpasswd file does not
	// have.
	Directory Directory
	// Rules are the access rules, first match wins; none: authenticated
	// clients may do anything.
	Rules []access.Rule
	// AnonymousPull lets clients without credentials pull what the rules
	// allow them.
	AnonymousPull bool
	// Tokens, if set, turns on the token flow.
	Tokens *token.Issuer
	// Realm is the token endpoint's absolute URL in challenges; "" builds
	// it from the request's scheme and Host.
	Realm string
}

// NewAuth returns the authentication and access control of o.
func NewAuth(o AuthOptions) (*Auth, error) {
	a := &Auth{users: map[string][]byte{}, ok: expirable.NewLRU[[32]byte, struct{}](1024, nil, 5*time.Minute),
		dir: o.Directory, policy: &access.Policy{Rules: o.Rules, AnonymousPull: o.AnonymousPull},
		tokens: o.Tokens, realm: o.Realm, failed: newLoginLimits()}
	for i, r := range o.Rules {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("access[%d]: %w", i, err)
		}
	}
	if o.Htpasswd != nil {
		if err := a.readHtpasswd(o.Htpasswd); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// ParseHtpasswd reads "user:bcrypt-hash" lines; other hash kinds are
// refused. The Auth has no rules: authenticated clients may do anything.
func ParseHtpasswd(r io.Reader, anonymousPull bool) (*Auth, error) {
	return NewAuth(AuthOptions{Htpasswd: r, AnonymousPull: anonymousPull})
}

func (a *Auth) readHtpasswd(r io.Reader) error {
	// The dummy costs as much as the dearest hash in the file: at another
	// cost an unknown user would be answered faster or slower than a known
	// one with a wrong password.
	dummyCost := bcrypt.MinCost
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		user, hash, ok := strings.Cut(text, ":")
		if !ok || user == "" {
			return fmt.Errorf("line %d: want user:hash", line)
		}
		cost, err := bcrypt.Cost([]byte(hash))
		if err != nil {
			return fmt.Errorf("line %d: user %s: not a bcrypt hash (make it with htpasswd -B)", line, user)
		}
		dummyCost = max(dummyCost, cost)
		a.users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(a.users) == 0 {
		return fmt.Errorf("no users")
	}
	var err error
	a.dummy, err = bcrypt.GenerateFromPassword([]byte("berth-dummy"), dummyCost)
	return err
}

// Policy is the access policy in force.
func (a *Auth) Policy() *access.Policy { return a.policy }

// login checks a user name and password: the htpasswd file first, then the
// directory. It is rate-limited per client address and per user once logins
// fail; a success is remembered a few minutes. The error is
// ErrInvalidCredentials, a *tooManyLogins, or the directory's failure.
func (a *Auth) login(ctx context.Context, r *http.Request, user, pass string) (access.Identity, error) {
	k := sha256.Sum256([]byte(user + "\x00" + pass))
	if _, hit := a.ok.Get(k); hit {
		if _, local := a.users[user]; local || a.dir == nil {
			return access.Identity{User: user}, nil
		}
	}
	ip := clientIP(r)
	if wait := a.failed.blocked(ip, user); wait > 0 {
		return access.Identity{}, &tooManyLogins{wait}
	}
	id, err := a.check(ctx, user, pass)
	if errors.Is(err, ErrInvalidCredentials) {
		a.failed.fail(ip, user)
		audit(ctx, r, "login_failed", user, "", "", "")
		return access.Identity{}, ErrInvalidCredentials
	}
	if err != nil {
		return access.Identity{}, err
	}
	if _, local := a.users[user]; local {
		a.ok.Add(k, struct{}{})
	}
	return id, nil
}

func (a *Auth) check(ctx context.Context, user, pass string) (access.Identity, error) {
	hash, known := a.users[user]
	if known || a.dir == nil {
		if !known {
			hash = a.dummy
		}
		if len(hash) == 0 || bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil || !known {
			return access.Identity{}, ErrInvalidCredentials
		}
		return access.Identity{User: user}, nil
	}
	id, err := a.dir.Check(ctx, user, pass)
	if err != nil && !errors.Is(err, ErrInvalidCredentials) {
		return access.Identity{}, &oci.Error{Code: oci.CodeUnavailable, Message: "the directory cannot check credentials now", Cause: err}
	}
	return id, err
}

// lookup is a user's identity now, for a refresh token: the user must
// still exist.
func (a *Auth) lookup(ctx context.Context, user string) (access.Identity, error) {
	if _, ok := a.users[user]; ok {
		return access.Identity{User: user}, nil
	}
	if a.dir == nil {
		return access.Identity{}, ErrInvalidCredentials
	}
	id, err := a.dir.Lookup(ctx, user)
	if err != nil && !errors.Is(err, ErrInvalidCredentials) {
		return access.Identity{}, &oci.Error{Code: oci.CodeUnavailable, Message: "the directory cannot check credentials now", Cause: err}
	}
	return id, err
}

// Authenticate requires valid Basic credentials, whatever the request:
// berth's own endpoints (import writes like a push) use it. The error is
// UNAUTHORIZED; w gets the challenge.
func (a *Auth) Authenticate(w http.ResponseWriter, r *http.Request) (user string, err error) {
	id, err := a.Identify(w, r)
	return id.User, err
}

// Identify requires valid Basic credentials, like Authenticate, and returns
// the identity with its groups, for berth's own endpoints to check against
// Policy.
func (a *Auth) Identify(w http.ResponseWriter, r *http.Request) (access.Identity, error) {
	user, pass, ok := r.BasicAuth()
	if ok {
		id, err := a.login(r.Context(), r, user, pass)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, ErrInvalidCredentials) {
			return access.Identity{}, tooMany(w, err)
		}
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
	msg := "authentication required"
	if ok {
		msg = "invalid credentials"
	}
	return access.Identity{}, &oci.Error{Code: oci.CodeUnauthorized, Message: msg}
}

// Admit is Identify, then a denial (DENIED, and an audit line) unless the
// rules let the identity do act to repo.
func (a *Auth) Admit(w http.ResponseWriter, r *http.Request, id access.Identity, repo string, act access.Action) error {
	if a.policy.Can(id, repo, act) {
		return nil
	}
	audit(r.Context(), r, "denied", id.User, string(act), repo, "")
	return oci.Errorf(oci.CodeDenied, "%s may not %s %s", id.User, act, clip(repo))
}

// caller is who a request comes from, and what its token grants.
type caller struct {
	id      access.Identity
	granted []access.Scope
	bearer  bool // the request carried a valid token
}

// need is what a request asks of the rules: an action on a repository
// (the name as the rules see it: with ?ns=, "HOST/NAME").
func need(req Request, r *http.Request, ns string) (repo string, act access.Action, ok bool) {
	switch req.Kind {
	case KindBase, KindCatalog, KindToken:
		return "", "", false
	}
	repo = req.Repo
	if ns != "" {
		repo = ns + "/" + repo
	}
	switch {
	case r.Method == http.MethodDelete && (req.Kind == KindManifest || req.Kind == KindBlob):
		return repo, access.Delete, true
	case isWrite(req, r):
		return repo, access.Push, true
	}
	return repo, access.Pull, true
}

// authorize decides a request: it returns the caller, or the error that
// answers the request (w then has the challenge). A denied request is one
// audit line.
func (a *Auth) authorize(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) (caller, error) {
	req := st.req
	c, err := a.identify(ctx, r)
	if err != nil {
		if errors.Is(err, ErrInvalidCredentials) || errors.Is(err, token.ErrInvalid) {
			if errors.Is(err, ErrInvalidCredentials) {
				st.authEvent = "login_failed"
			}
			return c, a.challenge(w, r, req, st.info.Host, "invalid credentials", err)
		}
		var tm *tooManyLogins
		if errors.As(err, &tm) {
			st.authEvent = "rate_limited"
		}
		return c, tooMany(w, err)
	}
	repo, act, ok := need(req, r, st.info.Host)
	if !ok {
		// /v2/ and the catalog: anyone may proceed who may pull at all;
		// the catalog is filtered, and needs credentials. With tokens,
		// /v2/ always challenges a client without one: that is how it
		// learns the realm (an anonymous one then gets an anonymous token).
		anonOK := a.policy.AnonymousPull && req.Kind == KindBase && (a.tokens == nil || c.bearer)
		if c.id.Anonymous() && !anonOK {
			return c, a.challenge(w, r, req, st.info.Host, "authentication required", nil)
		}
		return c, nil
	}
	if act == access.Push && st.query.Get("mount") != "" {
		// A cross-repository mount reads the other repository: without
		// pull there, it becomes a plain upload.
		if from := st.query.Get("from"); from != "" && !a.permits(c, from, access.Pull) {
			st.query.Del("mount")
		}
	}
	if a.permits(c, repo, act) {
		return c, nil
	}
	if c.bearer && a.policy.Can(c.id, repo, act) {
		// The token lacks the scope the rules would grant: ask for it.
		return c, a.challenge(w, r, req, st.info.Host, "insufficient scope", errInsufficientScope)
	}
	if c.id.Anonymous() {
		if a.policy.Can(c.id, repo, act) || (a.tokens != nil && !c.bearer) {
			// Allowed with a token or credentials, or (token flow) a
			// first request without a token: the challenge says where to
			// get one; not a denial yet.
			return c, a.challenge(w, r, req, st.info.Host, "authentication required", nil)
		}
		audit(ctx, r, "denied", "", string(act), repo, "")
		st.authEvent = "denied"
		return c, a.challenge(w, r, req, st.info.Host, "authentication required", nil)
	}
	audit(ctx, r, "denied", c.id.User, string(act), repo, "")
	st.authEvent = "denied"
	return c, oci.Errorf(oci.CodeDenied, "%s may not %s %s", c.id.User, act, clip(repo))
}

// permits reports whether c may do act to repo: by its token's grant, or
// by the rules for Basic credentials and anonymous clients without tokens.
func (a *Auth) permits(c caller, repo string, act access.Action) bool {
	if c.bearer {
		return access.Permits(c.granted, repo, act)
	}
	if a.tokens != nil && c.id.Anonymous() {
		return false // the token flow: anonymous clients come with a token
	}
	return a.policy.Can(c.id, repo, act)
}

var errInsufficientScope = errors.New("insufficient_scope")

// identify reads the request's credentials: a bearer token, Basic
// credentials, or none (anonymous).
func (a *Auth) identify(ctx context.Context, r *http.Request) (caller, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return caller{}, nil
	}
	if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "bearer") && a.tokens != nil {
		cl, err := a.tokens.Verify(strings.TrimSpace(tok))
		if err != nil {
			return caller{}, err
		}
		return caller{id: cl.Identity(), granted: cl.Access, bearer: true}, nil
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return caller{}, ErrInvalidCredentials
	}
	id, err := a.login(ctx, r, user, pass)
	return caller{id: id}, err
}

// challenge is the 401 of a request without the credentials it needs:
// Bearer with the token endpoint's realm, the service and the scope the
// request needs, or Basic without tokens.
func (a *Auth) challenge(w http.ResponseWriter, r *http.Request, req Request, ns, msg string, cause error) error {
	if a.tokens == nil {
		w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
	} else {
		w.Header().Set("WWW-Authenticate", a.bearerChallenge(r, req, ns, cause))
	}
	return &oci.Error{Code: oci.CodeUnauthorized, Message: msg}
}

// bearerChallenge is the WWW-Authenticate value of the token flow.
func (a *Auth) bearerChallenge(r *http.Request, req Request, ns string, cause error) string {
	var b strings.Builder
	b.WriteString(`Bearer realm="`)
	b.WriteString(a.realmFor(r))
	b.WriteString(`",service="`)
	b.WriteString(a.tokens.Service())
	b.WriteByte('"')
	if repo, act, ok := need(req, r, ns); ok {
		// Pushing reads too (a client checks which blobs exist first).
		actions := map[access.Action]string{access.Pull: "pull", access.Push: "pull,push", access.Delete: "delete"}[act]
		fmt.Fprintf(&b, `,scope="repository:%s:%s"`, repo, actions)
	} else if req.Kind == KindCatalog {
		b.WriteString(`,scope="registry:catalog:*"`)
	}
	switch {
	case errors.Is(cause, errInsufficientScope):
		b.WriteString(`,error="insufficient_scope"`)
	case errors.Is(cause, token.ErrInvalid):
		b.WriteString(`,error="invalid_token"`)
	}
	return b.String()
}

// realmFor is the token endpoint's absolute URL: the configured realm, or
// the request's own scheme and Host.
func (a *Auth) realmFor(r *http.Request) string {
	if a.realm != "" {
		return a.realm
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + TokenPath
}

// clientIP is the peer's address without the port (a reverse proxy in
// front is the client: X-Forwarded-For is not trusted).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// loginLimits rate-limit failed logins per client address and per user:
// a burst of failures, then one attempt every few seconds. Checks with
// credentials that succeeded recently are not limited.
type loginLimits struct {
	lim *expirable.LRU[string, *rate.Limiter]
}

const (
	failBurst = 10
	failEvery = 6 * time.Second
)

func newLoginLimits() *loginLimits {
	return &loginLimits{lim: expirable.NewLRU[string, *rate.Limiter](8192, nil, 10*failBurst*failEvery)}
}

// blocked returns how long ip or user must wait before trying again (0:
// not at all).
func (l *loginLimits) blocked(ip, user string) time.Duration {
	var wait time.Duration
	now := time.Now()
	for _, k := range [2]string{"ip:" + ip, "user:" + user} {
		if lim, ok := l.lim.Peek(k); ok && lim.TokensAt(now) < 1 {
			wait = max(wait, time.Duration((1-lim.TokensAt(now))*float64(failEvery)))
		}
	}
	return wait
}

// fail counts a failed login against ip and user.
func (l *loginLimits) fail(ip, user string) {
	for _, k := range [2]string{"ip:" + ip, "user:" + user} {
		lim, ok := l.lim.Get(k)
		if !ok {
			lim = rate.NewLimiter(rate.Every(failEvery), failBurst)
			l.lim.Add(k, lim)
		}
		lim.Allow()
	}
}

// tooManyLogins is a login refused unchecked: ip or user failed too
// often. tooMany turns it into the answer.
type tooManyLogins struct{ wait time.Duration }

func (e *tooManyLogins) Error() string { return "too many failed logins" }

// tooMany answers a rate-limited login with TOOMANYREQUESTS and
// Retry-After; other errors pass.
func tooMany(w http.ResponseWriter, err error) error {
	var tm *tooManyLogins
	if !errors.As(err, &tm) {
		return err
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(tm.wait/time.Second)+1))
	return &oci.Error{Code: oci.CodeTooManyRequests, Message: "too many failed logins; try again later", Cause: err}
}
