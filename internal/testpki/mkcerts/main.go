// Command mkcerts writes a private CA and a server certificate signed by it
// into a directory, for the end-to-end scripts: ca.crt, server.crt,
// server.key, client.crt, client.key.
//
//	go run ./internal/testpki/mkcerts -dir DIR -hosts 127.0.0.1,localhost
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-dev/berth/internal/testpki"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkcerts:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("dir", ".", "directory to write the files into")
	hosts := flag.String("hosts", "127.0.0.1,localhost", "comma-separated names and addresses of the server certificate")
	flag.Parse()
	ca, err := testpki.New("berth test CA")
	if err != nil {
		return err
	}
	srv, err := ca.Server(strings.Split(*hosts, ",")...)
	if err != nil {
		return err
	}
	cli, err := ca.Client("berth")
	if err != nil {
		return err
	}
	files := map[string][]byte{"ca.crt": ca.PEM, "server.crt": srv.CertPEM, "server.key": srv.KeyPEM,
		"client.crt": cli.CertPEM, "client.key": cli.KeyPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(*dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
