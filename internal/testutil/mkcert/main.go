// Command mkcert makes the certificates of berth's TLS tests: a throwaway CA,
// server certificates it signs (for a rotation, another one by the same CA)
// and client certificates for mTLS. It prints the new certificate's serial
// number in openssl's form (upper-case hex, whole bytes).
//
//	go run ./internal/testutil/mkcert ca DIR                       # DIR/ca.crt, DIR/ca.key
//	go run ./internal/testutil/mkcert server DIR CERT KEY HOST...  # signed by DIR's CA
//	go run ./internal/testutil/mkcert client DIR CERT KEY NAME
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-dev/berth/internal/testutil/pki"
)

const usage = `usage: mkcert ca DIR | mkcert server DIR CERT KEY HOST... | mkcert client DIR CERT KEY NAME`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkcert:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("%s", usage)
	}
	dir := args[1]
	switch {
	case args[0] == "ca" && len(args) == 2:
		ca, err := pki.NewCA("berth test CA")
		if err != nil {
			return err
		}
		key, err := ca.KeyPEM()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := pki.WriteFile(filepath.Join(dir, "ca.crt"), ca.PEM, 0o644); err != nil {
			return err
		}
		return pki.WriteFile(filepath.Join(dir, "ca.key"), key, 0o600)
	case (args[0] == "server" && len(args) >= 5) || (args[0] == "client" && len(args) == 5):
		certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
		if err != nil {
			return err
		}
		keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
		if err != nil {
			return err
		}
		ca, err := pki.ParseCA(certPEM, keyPEM)
		if err != nil {
			return err
		}
		var p pki.Pair
		if args[0] == "server" {
			p, err = ca.Server(args[4], args[4:], ca.Cert.NotAfter)
		} else {
			p, err = ca.Client(args[4])
		}
		if err != nil {
			return err
		}
		if err := p.Write(args[2], args[3]); err != nil {
			return err
		}
		s := fmt.Sprintf("%X", p.Leaf.SerialNumber)
		if len(s)%2 == 1 {
			s = "0" + s
		}
		fmt.Println(strings.ToUpper(s))
		return nil
	}
	return fmt.Errorf("%s", usage)
}
