package proxy

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/crypto/bcrypt"
)

// Auth is client authentication with HTTP Basic credentials checked against
// bcrypt hashes (an htpasswd file made with `htpasswd -B`). It guards pushes
// and deletes always, and pulls unless AnonymousPull is set. Client
// credentials are only ever checked here: they are never sent upstream.
type Auth struct {
	users         map[string][]byte // user -> bcrypt hash
	anonymousPull bool
	// ok remembers recent successful checks, since bcrypt costs tens of
	// milliseconds and a push is dozens of requests.
	ok *expirable.LRU[[32]byte, struct{}]
	// dummy is checked for unknown users, so that a wrong user name takes
	// as long as a wrong password (no user enumeration by timing). It has
	// the highest cost found in the file.
	dummy []byte
}

// ParseHtpasswd reads "user:bcrypt-hash" lines; other hash kinds are refused.
func ParseHtpasswd(r io.Reader, anonymousPull bool) (*Auth, error) {
	a := &Auth{users: map[string][]byte{}, anonymousPull: anonymousPull,
		ok: expirable.NewLRU[[32]byte, struct{}](1024, nil, 5*time.Minute)}
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
			return nil, fmt.Errorf("line %d: want user:hash", line)
		}
		cost, err := bcrypt.Cost([]byte(hash))
		if err != nil {
			return nil, fmt.Errorf("line %d: user %s: not a bcrypt hash (make it with htpasswd -B)", line, user)
		}
		dummyCost = max(dummyCost, cost)
		a.users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(a.users) == 0 {
		return nil, fmt.Errorf("no users")
	}
	var err error
	if a.dummy, err = bcrypt.GenerateFromPassword([]byte("berth-dummy"), dummyCost); err != nil {
		return nil, err
	}
	return a, nil
}

// check verifies Basic credentials; present is false when there are none.
func (a *Auth) check(r *http.Request) (present, valid bool) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return r.Header.Get("Authorization") != "", false
	}
	k := sha256.Sum256([]byte(user + "\x00" + pass))
	if _, hit := a.ok.Get(k); hit {
		return true, true
	}
	hash, known := a.users[user]
	if !known {
		hash = a.dummy
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil || !known {
		return true, false
	}
	a.ok.Add(k, struct{}{})
	return true, true
}

// Authenticate requires valid credentials, whatever the request: berth's
// own endpoints (import writes like a push) use it. The error is
// UNAUTHORIZED; w gets the challenge.
func (a *Auth) Authenticate(w http.ResponseWriter, r *http.Request) (user string, err error) {
	present, valid := a.check(r)
	if valid {
		user, _, _ = r.BasicAuth()
		return user, nil
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
	msg := "authentication required"
	if present {
		msg = "invalid credentials"
	}
	return "", &oci.Error{Code: oci.CodeUnauthorized, Message: msg}
}

// authorize returns an UNAUTHORIZED error when the request needs
// credentials it does not carry, or carries wrong ones.
// authorize checks a request's credentials; user is the authenticated
// client, "" for an anonymous one.
func (a *Auth) authorize(w http.ResponseWriter, r *http.Request, req Request) (user string, err error) {
	present, valid := a.check(r)
	if valid {
		user, _, _ = r.BasicAuth()
		return user, nil
	}
	need := present || !a.anonymousPull || req.Kind == KindBase || isWrite(req, r) || req.Kind == KindCatalog
	if !need {
		return "", nil
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
	msg := "authentication required"
	if present {
		msg = "invalid credentials"
	}
	return "", &oci.Error{Code: oci.CodeUnauthorized, Message: msg}
}
