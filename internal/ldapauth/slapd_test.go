package ldapauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// startSlapd runs Debian's slapd in a temporary directory (slapadd, no
// debconf) with carol in team-a and team-c, dave in team-b, and "a*" whose
// name is a filter metacharacter; it skips when slapd is not installed.
func startSlapd(t *testing.T) string {
	url, _ := startSlapdTLS(t, nil)
	return url
}

// startSlapdTLS is startSlapd that, given a certificate and key in PEM,
// also serves ldaps:// and StartTLS; it returns the ldap:// and ldaps://
// URLs.
func startSlapdTLS(t *testing.T, pems *[2][]byte) (ldapURL, ldapsURL string) {
	t.Helper()
	slapd, err := exec.LookPath("slapd")
	if err != nil {
		if slapd, err = exec.LookPath("/usr/sbin/slapd"); err != nil {
			t.Skip("slapd is not installed (apt-get install slapd ldap-utils): the LDAP tests against a real directory are in .ci/auth-e2e.sh too")
		}
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	tlsConf := ""
	if pems != nil {
		for i, name := range []string{"cert.pem", "key.pem"} {
			if err := os.WriteFile(filepath.Join(dir, name), pems[i], 0o600); err != nil {
				t.Fatal(err)
			}
		}
		tlsConf = fmt.Sprintf("TLSCertificateFile %[1]s/cert.pem\nTLSCertificateKeyFile %[1]s/key.pem\n", dir)
	}
	if err := os.WriteFile(conf, []byte(tlsConf+fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile %[1]s/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "dc=t"
rootdn "cn=admin,dc=t"
rootpw admin-pw
directory %[1]s/db
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
`, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	var ldif strings.Builder
	ldif.WriteString("dn: dc=t\nobjectClass: dcObject\nobjectClass: organization\no: t\ndc: t\n\n")
	ldif.WriteString("dn: ou=people,dc=t\nobjectClass: organizationalUnit\nou: people\n\n")
	ldif.WriteString("dn: ou=groups,dc=t\nobjectClass: organizationalUnit\nou: groups\n\n")
	for _, u := range []string{"carol", "dave", "a*"} {
		fmt.Fprintf(&ldif, "dn: uid=%s,ou=people,dc=t\nobjectClass: inetOrgPerson\nuid: %s\ncn: %s\nsn: x\nuserPassword: %s-pw\n\n", u, u, u, u)
	}
	for g, m := range map[string]string{"team-a": "carol", "team-b": "dave", "team-c": "carol"} {
		fmt.Fprintf(&ldif, "dn: cn=%s,ou=groups,dc=t\nobjectClass: groupOfNames\ncn: %s\nmember: uid=%s,ou=people,dc=t\n\n", g, g, m)
	}
	data := filepath.Join(dir, "data.ldif")
	if err := os.WriteFile(data, []byte(ldif.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(filepath.Dir(slapd), "slapadd"), "-f", conf, "-l", data).CombinedOutput(); err != nil {
		t.Skipf("slapadd: %v: %s", err, out)
	}
	addr, saddr := freeAddr(t), freeAddr(t)
	urls := "ldap://" + addr + "/"
	if pems != nil {
		urls += " ldaps://" + saddr + "/"
	}
	cmd := exec.Command(slapd, "-f", conf, "-h", urls, "-d", "0")
	if err := cmd.Start(); err != nil {
		t.Skipf("slapd: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "ldap://" + addr, "ldaps://" + saddr
		}
		if time.Now().After(deadline) {
			t.Fatal("slapd did not listen within 10 s")
		}
		time.Sleep(20 * time.Millisecond) // polling for the listener, with a deadline
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ldaps:// and StartTLS (ldap+starttls://) against a directory with a
// certificate of a private CA: trusted through Config.TLS, refused without.
func TestSlapdTLS(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ldap test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pems := [2][]byte{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})}
	plain, secure := startSlapdTLS(t, &pems)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	trusted := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	for _, url := range []string{secure, strings.Replace(plain, "ldap://", "ldap+starttls://", 1)} {
		cfg := Config{URL: url, BindDN: "cn=admin,dc=t", BindPassword: "admin-pw", UserBase: "ou=people,dc=t", TLS: trusted}
		d, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if id, err := d.Check(context.Background(), "dave", "dave-pw"); err != nil || id.User != "dave" {
			t.Errorf("%s: %+v %v", url, id, err)
		}
		cfg.TLS = nil // the system's roots do not know the private CA
		d, _ = New(cfg)
		if _, err := d.Check(context.Background(), "dave", "dave-pw"); err == nil || errors.Is(err, ErrInvalid) {
			t.Errorf("%s without the CA: %v, want a TLS error", url, err)
		}
	}
}

func TestSlapd(t *testing.T) {
	t.Parallel()
	url := startSlapd(t)
	d, err := New(Config{URL: url, BindDN: "cn=admin,dc=t", BindPassword: "admin-pw", UserBase: "ou=people,dc=t",
		GroupBase: "ou=groups,dc=t", GroupFilter: "(member={dn})"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := d.Check(ctx, "carol", "carol-pw")
	slices.Sort(id.Groups)
	if err != nil || id.User != "carol" || !slices.Equal(id.Groups, []string{"team-a", "team-c"}) {
		t.Errorf("carol: %+v %v", id, err)
	}
	if id, err := d.Lookup(ctx, "dave"); err != nil || !slices.Equal(id.Groups, []string{"team-b"}) {
		t.Errorf("lookup dave: %+v %v", id, err)
	}
	for _, tc := range []struct{ user, pass string }{
		{"carol", "wrong"}, {"nobody", "x-pw"}, {"*", "carol-pw"}, {"carol)(uid=*", "carol-pw"}, {"carol", ""},
	} {
		if _, err := d.Check(ctx, tc.user, tc.pass); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q/%q: %v, want ErrInvalid", tc.user, tc.pass, err)
		}
	}
	// A name with a filter metacharacter is escaped, not interpreted.
	if id, err := d.Check(ctx, "a*", "a*-pw"); err != nil || id.User != "a*" {
		t.Errorf("a*: %+v %v", id, err)
	}
	// A wrong bind_dn password is the directory's failure, not the user's.
	bad, _ := New(Config{URL: url, BindDN: "cn=admin,dc=t", BindPassword: "nope", UserBase: "ou=people,dc=t"})
	if _, err := bad.Check(ctx, "dave", "dave-pw"); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("wrong bind password: %v", err)
	}
}
