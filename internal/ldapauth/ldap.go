// Package ldapauth checks user names and passwords against an LDAP
// directory (OpenLDAP, Active Directory, FreeIPA): a service account
// searches the user's entry, a bind as that entry checks the password, and
// the groups whose filter names the entry become the user's groups.
// Successful checks are remembered briefly, so a pull of fifty layers asks
// the directory once.
package ldapauth

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/access"
	"github.com/go-ldap/ldap/v3"
	"github.com/hashicorp/golang-lru/v2/expirable"
)

// Config is how to reach and search the directory.
type Config struct {
	URL          string // ldap://host:389, ldaps://host:636; ldap+starttls://host:389 for StartTLS
	StartTLS     bool   // upgrade an ldap:// connection with StartTLS
	BindDN       string
	BindPassword string
	UserBase     string
	UserFilter   string // "(uid={user})"
	GroupBase    string
	GroupFilter  string // "(member={dn})"; empty: no groups
	// TLS configures ldaps:// and StartTLS; nil is the system's roots.
	TLS *tls.Config
	// Timeout bounds one check (dial, binds and searches); zero means 5 s.
	Timeout time.Duration
	// CacheTTL is how long a successful check is remembered; zero means
	// one minute.
	CacheTTL time.Duration
}

// ErrInvalid is a wrong user name or password.
var ErrInvalid = errors.New("invalid credentials")

// Directory checks credentials against one LDAP server.
type Directory struct {
	cfg  Config
	addr string
	tls  bool
	ok   *expirable.LRU[[32]byte, access.Identity]
}

// New checks cfg and returns a Directory; it does not connect.
func New(cfg Config) (*Directory, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("url %q: want ldap://HOST[:PORT] or ldaps://HOST[:PORT]", cfg.URL)
	}
	d := &Directory{cfg: cfg}
	switch u.Scheme {
	case "ldap":
	case "ldap+starttls":
		d.cfg.StartTLS = true
	case "ldaps":
		d.tls = true
	default:
		return nil, fmt.Errorf("url %q: want ldap://HOST[:PORT] or ldaps://HOST[:PORT]", cfg.URL)
	}
	d.addr = u.Host
	if u.Port() == "" {
		d.addr = net.JoinHostPort(u.Hostname(), map[bool]string{true: "636", false: "389"}[d.tls])
	}
	if cfg.UserBase == "" {
		return nil, errors.New("user_base: required (ou=people,dc=example,dc=com)")
	}
	if d.cfg.UserFilter == "" {
		d.cfg.UserFilter = "(uid={user})"
	}
	if !strings.Contains(d.cfg.UserFilter, "{user}") {
		return nil, fmt.Errorf("user_filter %q: must contain {user}", d.cfg.UserFilter)
	}
	if d.cfg.GroupFilter == "" && d.cfg.GroupBase != "" {
		d.cfg.GroupFilter = "(member={dn})"
	}
	if d.cfg.GroupFilter != "" && d.cfg.GroupBase == "" {
		return nil, errors.New("group_base: required with group_filter")
	}
	for name, f := range map[string]string{"user_filter": d.cfg.UserFilter, "group_filter": d.cfg.GroupFilter} {
		if f == "" {
			continue
		}
		probe := strings.NewReplacer("{user}", "x", "{dn}", "cn=x").Replace(f)
		if _, err := ldap.CompileFilter(probe); err != nil {
			return nil, fmt.Errorf("%s %q: %w", name, f, err)
		}
	}
	if d.cfg.Timeout == 0 {
		d.cfg.Timeout = 5 * time.Second
	}
	if d.cfg.CacheTTL == 0 {
		d.cfg.CacheTTL = time.Minute
	}
	d.ok = expirable.NewLRU[[32]byte, access.Identity](1024, nil, d.cfg.CacheTTL)
	return d, nil
}

// Check verifies user's password and returns the user with its groups.
// A wrong user or password is ErrInvalid; a directory that cannot be
// reached, or answers otherwise, is another error.
func (d *Directory) Check(ctx context.Context, user, password string) (access.Identity, error) {
	if user == "" || password == "" {
		// An empty password is an unauthenticated bind (RFC 4513 5.1.2),
		// which most servers accept: never a login.
		return access.Identity{}, ErrInvalid
	}
	k := sha256.Sum256([]byte(user + "\x00" + password))
	if id, ok := d.ok.Get(k); ok {
		return id, nil
	}
	id, err := d.lookup(ctx, user, &password)
	if err != nil {
		return access.Identity{}, err
	}
	d.ok.Add(k, id)
	return id, nil
}

// Lookup returns user with its groups without a password (a refresh token
// is redeemed: the user must still exist). ErrInvalid if there is no such
// user.
func (d *Directory) Lookup(ctx context.Context, user string) (access.Identity, error) {
	if user == "" {
		return access.Identity{}, ErrInvalid
	}
	return d.lookup(ctx, user, nil)
}

func (d *Directory) lookup(ctx context.Context, user string, password *string) (access.Identity, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	conn, err := d.dial(ctx)
	if err != nil {
		return access.Identity{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if d.cfg.BindDN != "" {
		if err := conn.Bind(d.cfg.BindDN, d.cfg.BindPassword); err != nil {
			return access.Identity{}, fmt.Errorf("ldap: bind as bind_dn: %w", err)
		}
	}
	filter := strings.ReplaceAll(d.cfg.UserFilter, "{user}", ldap.EscapeFilter(user))
	res, err := conn.Search(ldap.NewSearchRequest(d.cfg.UserBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, 0, false, filter, []string{"dn"}, nil))
	if err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		return access.Identity{}, fmt.Errorf("ldap: search user: %w", err)
	}
	if res == nil || len(res.Entries) != 1 {
		return access.Identity{}, ErrInvalid // none, or ambiguous
	}
	dn := res.Entries[0].DN
	if password != nil {
		if err := conn.Bind(dn, *password); err != nil {
			if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
				return access.Identity{}, ErrInvalid
			}
			return access.Identity{}, fmt.Errorf("ldap: bind as user: %w", err)
		}
		// Search groups as the service account, not as the user.
		if d.cfg.BindDN != "" {
			if err := conn.Bind(d.cfg.BindDN, d.cfg.BindPassword); err != nil {
				return access.Identity{}, fmt.Errorf("ldap: bind as bind_dn: %w", err)
			}
		}
	}
	id := access.Identity{User: user}
	if d.cfg.GroupFilter == "" {
		return id, nil
	}
	gf := strings.ReplaceAll(d.cfg.GroupFilter, "{dn}", ldap.EscapeFilter(dn))
	gf = strings.ReplaceAll(gf, "{user}", ldap.EscapeFilter(user))
	gres, err := conn.Search(ldap.NewSearchRequest(d.cfg.GroupBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, gf, []string{"cn"}, nil))
	if err != nil {
		return access.Identity{}, fmt.Errorf("ldap: search groups: %w", err)
	}
	for _, e := range gres.Entries {
		if cn := e.GetAttributeValue("cn"); cn != "" {
			id.Groups = append(id.Groups, cn)
		}
	}
	return id, nil
}

func (d *Directory) dial(ctx context.Context) (*ldap.Conn, error) {
	host, _, _ := net.SplitHostPort(d.addr)
	tc := d.cfg.TLS
	if tc == nil {
		tc = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	dl, _ := ctx.Deadline()
	opts := []ldap.DialOpt{ldap.DialWithDialer(&net.Dialer{Deadline: dl})}
	scheme := "ldap://"
	if d.tls {
		scheme = "ldaps://"
		opts = append(opts, ldap.DialWithTLSConfig(tc))
	}
	conn, err := ldap.DialURL(scheme+d.addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("ldap: %w", err)
	}
	conn.SetTimeout(time.Until(dl))
	if d.cfg.StartTLS {
		if err := conn.StartTLS(tc); err != nil {
			conn.Close()
			return nil, fmt.Errorf("ldap: StartTLS: %w", err)
		}
	}
	return conn, nil
}
