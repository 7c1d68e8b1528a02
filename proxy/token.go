package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/rs/zerolog"
)

// TokenPath is where berth's token endpoint is served, on the API's port.
const TokenPath = "/v2/token"

// maxScopes bounds the scopes one token request may ask for.
const maxScopes = 32

// tokenResponse is the token endpoint's answer, as the Docker token
// specification and its OAuth2 variant (docker login) describe it.
type tokenResponse struct {
	Token        string `json:"token"`
	AccessToken  string `json:"access_token"`
	ExpiresIn    int    `json:"expires_in"`
	IssuedAt     string `json:"issued_at"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// serveToken is the token endpoint. GET takes Basic credentials (or none:
// an anonymous token) and scope parameters; offline_token=true adds a
// refresh token. POST is OAuth2 (docker login): grant_type=password with
// username and password, or grant_type=refresh_token with refresh_token;
// access_type=offline adds a refresh token. Either way the token grants the
// requested scopes the rules allow, and no more.
func (a *Auth) serveToken(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	var (
		id      access.Identity
		scopes  []string
		err     error
		offline bool
	)
	switch r.Method {
	case http.MethodGet:
		q := st.query
		scopes = q["scope"]
		offline = q.Get("offline_token") == "true"
		if user, pass, ok := r.BasicAuth(); ok {
			id, err = a.login(ctx, r, user, pass)
		} else if r.Header.Get("Authorization") != "" {
			err = ErrInvalidCredentials
		}
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			return oauthError(w, http.StatusBadRequest, "invalid_request", "unreadable form")
		}
		f := r.PostForm
		scopes = strings.Fields(f.Get("scope"))
		offline = f.Get("access_type") == "offline"
		switch f.Get("grant_type") {
		case "password":
			id, err = a.login(ctx, r, f.Get("username"), f.Get("password"))
		case "refresh_token":
			cl, verr := a.tokens.VerifyRefresh(f.Get("refresh_token"))
			if verr != nil {
				audit(ctx, r, "login_failed", "", "", "", "")
				st.authEvent = "login_failed"
				return oauthError(w, http.StatusUnauthorized, "invalid_grant", "invalid refresh token")
			}
			id, err = a.lookup(ctx, cl.Subject)
			offline = false // the client keeps the refresh token it has
		default:
			return oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be password or refresh_token")
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		return errMethod
	}
	if errors.Is(err, ErrInvalidCredentials) {
		st.authEvent = "login_failed"
		registry.InfoFrom(ctx).User = ""
		w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
		return &oci.Error{Code: oci.CodeUnauthorized, Message: "invalid credentials"}
	}
	if err != nil {
		var tm *tooManyLogins
		if errors.As(err, &tm) {
			st.authEvent = "rate_limited"
		}
		return tooMany(w, err)
	}
	registry.InfoFrom(ctx).User = id.User
	granted := a.policy.Grant(id, access.ParseScopes(scopes, maxScopes))
	tok, issued, err := a.tokens.Access(id, granted)
	if err != nil {
		return err
	}
	resp := tokenResponse{Token: tok, AccessToken: tok, ExpiresIn: int(a.tokens.TTL() / time.Second),
		IssuedAt: issued.UTC().Format(time.RFC3339)}
	if len(granted) > 0 {
		parts := make([]string, len(granted))
		for i, g := range granted {
			parts[i] = g.String()
		}
		resp.Scope = strings.Join(parts, " ")
	}
	if offline && !id.Anonymous() {
		if resp.RefreshToken, err = a.tokens.Refresh(id); err != nil {
			return err
		}
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	st.authEvent = "token_issued"
	return nil
}

// oauthError is an OAuth2 error response (RFC 6749 5.2), which docker
// login understands on the POST flow.
func oauthError(w http.ResponseWriter, status int, code, desc string) error {
	b, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
	return nil
}

// audit writes one audit line: a push, a delete, a failed login or a
// denied request, with who, what, where and from which address. The line
// has "audit":true and no level, so it is written whatever log_level says.
// Passwords and tokens never appear in it.
func audit(ctx context.Context, r *http.Request, event, user, action, repo, digest string) {
	l := zerolog.Ctx(ctx)
	if l.GetLevel() == zerolog.Disabled {
		return
	}
	ev := l.Log().Bool("audit", true).Str("event", event)
	if user != "" {
		ev = ev.Str("user", user)
	}
	if action != "" {
		ev = ev.Str("action", action)
	}
	if repo != "" {
		ev = ev.Str("repo", repo)
	}
	if digest != "" {
		ev = ev.Str("digest", digest)
	}
	ev.Str("client", r.RemoteAddr).Str("request_id", registry.InfoFrom(ctx).RequestID).Msg("audit")
}
