package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
)

// Credential is what an upstream is authenticated with: a username and
// password for Basic challenges and token requests, or an identity token
// (an OAuth2 refresh token, docker's "identitytoken") for token requests.
// The zero Credential is anonymous.
type Credential struct {
	Username      string
	Password      string
	IdentityToken string
}

// anonymous reports whether c carries nothing.
func (c Credential) anonymous() bool {
	return c.Username == "" && c.Password == "" && c.IdentityToken == ""
}

// Credentials supplies an upstream's credential when it is needed. Get is
// called for every authentication (a Basic header, a token request), so an
// implementation caches what is expensive to get; Forget is called when the
// upstream rejected what Get returned, so the next Get asks again.
// Implementations are safe for concurrent use. Errors never contain the
// secret.
type Credentials interface {
	Get(ctx context.Context) (Credential, error)
	Forget()
}

// Static is a fixed credential (username and password from the
// configuration).
type Static Credential

// Get implements Credentials.
func (s Static) Get(context.Context) (Credential, error) { return Credential(s), nil }

// Forget implements Credentials: a fixed credential cannot be asked again.
func (Static) Forget() {}

// DefaultCredentialTTL is how long a credential from a helper or a docker
// config file is used before it is asked for again (ECR's tokens last 12 h,
// GCR's one hour: a quarter of an hour keeps well within both).
const DefaultCredentialTTL = 15 * time.Minute

// DefaultHelperTimeout bounds one run of a credential helper.
const DefaultHelperTimeout = 10 * time.Second

// cachedCredentials caches what fetch returns for ttl; Forget drops it.
// Concurrent Gets on a miss share one fetch.
type cachedCredentials struct {
	fetch func(ctx context.Context) (Credential, error)
	ttl   time.Duration
	now   func() time.Time

	mu      sync.Mutex
	cred    Credential
	expiry  time.Time
	flight  chan struct{} // closed when the fetch in progress ends
	lastErr error
}

func (c *cachedCredentials) Get(ctx context.Context) (Credential, error) {
	for {
		c.mu.Lock()
		if c.now().Before(c.expiry) {
			cred := c.cred
			c.mu.Unlock()
			return cred, nil
		}
		if c.flight == nil {
			c.flight = make(chan struct{})
			c.mu.Unlock()
			cred, err := c.fetch(ctx)
			c.mu.Lock()
			if err == nil {
				c.cred, c.expiry = cred, c.now().Add(c.ttl)
			}
			c.lastErr = err
			close(c.flight)
			c.flight = nil
			c.mu.Unlock()
			return cred, err
		}
		wait := c.flight
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return Credential{}, ctx.Err()
		}
		c.mu.Lock()
		err := c.lastErr
		ok := c.now().Before(c.expiry)
		c.mu.Unlock()
		if !ok && err != nil {
			return Credential{}, err
		}
	}
}

func (c *cachedCredentials) Forget() {
	c.mu.Lock()
	c.expiry = time.Time{}
	c.mu.Unlock()
}

// Helper runs docker-credential-NAME with the credential helper protocol
// (`get`, the server URL on stdin, JSON on stdout), at most timeout per run
// (zero: DefaultHelperTimeout), and caches its answer for ttl (zero:
// DefaultCredentialTTL). serverURL is what the helper is asked about: the
// upstream's host, as docker asks it. The helper's output is never logged
// nor put in an error.
func Helper(name, serverURL string, timeout, ttl time.Duration) Credentials {
	timeout = orDefault(timeout, DefaultHelperTimeout)
	program := "docker-credential-" + name
	return &cachedCredentials{ttl: orDefault(ttl, DefaultCredentialTTL), now: time.Now,
		fetch: func(ctx context.Context) (Credential, error) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
			defer cancel()
			return runHelper(ctx, program, serverURL)
		}}
}

// errNoCredentials is a helper's "credentials not found" answer.
var errNoCredentials = errors.New("no credentials")

// runHelper asks program for serverURL's credential.
func runHelper(ctx context.Context, program, serverURL string) (Credential, error) {
	creds, err := client.Get(func(args ...string) client.Program {
		cmd := exec.CommandContext(ctx, program, args...)
		cmd.WaitDelay = time.Second
		return &helperCmd{cmd: cmd}
	}, serverURL)
	if err != nil {
		// client.Get's errors quote the helper's output: never pass it on.
		switch {
		case credentials.IsErrCredentialsNotFound(err):
			return Credential{}, fmt.Errorf("credential helper %s has no credentials for %s: %w", program, serverURL, errNoCredentials)
		case ctx.Err() != nil:
			return Credential{}, fmt.Errorf("credential helper %s did not answer within its timeout", program)
		}
		var ee *exec.Error
		if errors.As(err, &ee) {
			return Credential{}, fmt.Errorf("credential helper %s: %w", program, ee.Err)
		}
		var xe *exec.ExitError
		if errors.As(err, &xe) {
			return Credential{}, fmt.Errorf("credential helper %s failed (%s)", program, xe.ProcessState)
		}
		return Credential{}, fmt.Errorf("credential helper %s gave no usable answer", program)
	}
	if creds.Username == "<token>" { // the helper protocol's identity-token marker
		return Credential{IdentityToken: creds.Secret}, nil
	}
	return Credential{Username: creds.Username, Password: creds.Secret}, nil
}

// helperCmd is a client.Program run under a context, with stderr
// discarded (a helper may print secrets there too).
type helperCmd struct{ cmd *exec.Cmd }

func (h *helperCmd) Output() ([]byte, error) { return h.cmd.Output() }
func (h *helperCmd) Input(in io.Reader)      { h.cmd.Stdin = in }

// DockerConfig reads an upstream's credential from a docker config.json at
// path, as docker does, under the first of hosts (the names the upstream
// goes by) the file knows: credHelpers[host] names a helper to run, else
// auths[host] holds auth (base64 user:password), username and password, or
// identitytoken; else credsStore names a helper, asked about hosts[0]. The
// file is read again (and the helper run again) after ttl (zero:
// DefaultCredentialTTL) or when the upstream rejected the credential. A
// file that knows none of the hosts is an anonymous credential.
func DockerConfig(path string, hosts []string, timeout, ttl time.Duration) Credentials {
	timeout = orDefault(timeout, DefaultHelperTimeout)
	return &cachedCredentials{ttl: orDefault(ttl, DefaultCredentialTTL), now: time.Now,
		fetch: func(ctx context.Context) (Credential, error) {
			helper, host, cred, err := readDockerConfig(path, hosts)
			if err != nil || helper == "" {
				return cred, err
			}
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
			defer cancel()
			cred, err = runHelper(ctx, "docker-credential-"+helper, host)
			if errors.Is(err, errNoCredentials) {
				return Credential{}, nil // as docker: no entry is an anonymous pull
			}
			return cred, err
		}}
}

// dockerConfigFile is the part of docker's config.json berth reads.
type dockerConfigFile struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	CredHelpers map[string]string `json:"credHelpers"`
	CredsStore  string            `json:"credsStore"`
}

// ReadDockerConfig checks that path is a docker config.json berth can read
// (for start-up validation); it says nothing of its secrets.
func ReadDockerConfig(path string) error {
	_, err := parseDockerConfig(path)
	return err
}

func parseDockerConfig(path string) (*dockerConfigFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f dockerConfigFile
	if err := json.Unmarshal(b, &f); err != nil {
		// A syntax error may quote part of the file: say where, not what.
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%s is not valid JSON (at byte %d)", path, se.Offset)
		}
		return nil, fmt.Errorf("%s is not a docker config file", path)
	}
	return &f, nil
}

// readDockerConfig returns the helper to run and the host to ask it about,
// or the credential.
func readDockerConfig(path string, hosts []string) (helper, host string, cred Credential, err error) {
	f, err := parseDockerConfig(path)
	if err != nil {
		return "", "", Credential{}, err
	}
	for _, host := range hosts {
		if h := f.CredHelpers[host]; h != "" {
			return h, host, Credential{}, nil
		}
		for k, a := range f.Auths {
			// Keys are hosts, or URLs of them (https://index.docker.io/v1/).
			h := strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
			h, _, _ = strings.Cut(h, "/")
			if !strings.EqualFold(h, host) {
				continue
			}
			switch {
			case a.IdentityToken != "":
				return "", "", Credential{Username: a.Username, IdentityToken: a.IdentityToken}, nil
			case a.Auth != "":
				raw, err := base64.StdEncoding.DecodeString(a.Auth)
				if err != nil {
					return "", "", Credential{}, fmt.Errorf("%s: auths[%q].auth is not base64", path, k)
				}
				u, p, ok := strings.Cut(string(raw), ":")
				if !ok {
					return "", "", Credential{}, fmt.Errorf("%s: auths[%q].auth is not user:password", path, k)
				}
				return "", "", Credential{Username: u, Password: p}, nil
			case a.Username != "":
				return "", "", Credential{Username: a.Username, Password: a.Password}, nil
			}
		}
	}
	if f.CredsStore != "" && len(hosts) > 0 {
		return f.CredsStore, hosts[0], Credential{}, nil
	}
	return "", "", Credential{}, nil
}
