// Command tlsload is the load of berth's certificate-rotation test: workers
// GET one blob over HTTPS until a stop file appears, check every body's
// digest, and record which server certificate (serial) each new connection
// was shown. Half the workers keep their connections alive (a rotation must
// not drop them), half make a new connection per request (they must see the
// new certificate). It prints one summary line and exits 1 if any request
// failed.
//
//	tlsload -url https://127.0.0.1:5000/v2/REPO/blobs/sha256:... -ca ca.crt -stop FILE -seen FILE
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "blob URL (ends with sha256:HEX)")
	caFile := flag.String("ca", "", "CA certificate file (PEM)")
	stop := flag.String("stop", "", "stop when this file exists")
	seen := flag.String("seen", "", `file kept up to date with the serials seen and their connections ("SERIAL N" lines)`)
	workers := flag.Int("workers", 4, "concurrent clients")
	flag.Parse()
	if err := run(*url, *caFile, *stop, *seen, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "tlsload:", err)
		os.Exit(1)
	}
}

func run(url, caFile, stop, seenFile string, workers int) error {
	_, want, ok := strings.Cut(url, "sha256:")
	if !ok {
		return errors.New("-url must end with a sha256 digest")
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return errors.New("no certificate in -ca")
	}
	var (
		requests, failures atomic.Int64
		mu                 sync.Mutex
		serials            = map[string]int{}
		firstErr           error
	)
	record := func(cs tls.ConnectionState) {
		s := fmt.Sprintf("%X", cs.PeerCertificates[0].SerialNumber)
		if len(s)%2 == 1 {
			s = "0" + s
		}
		mu.Lock()
		defer mu.Unlock()
		serials[s]++
		if seenFile != "" {
			var lines []string
			for k, n := range serials {
				lines = append(lines, fmt.Sprintf("%s %d", k, n))
			}
			slices.Sort(lines)
			tmp := seenFile + ".tmp"
			if os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o644) == nil {
				_ = os.Rename(tmp, seenFile)
			}
		}
	}
	var wg sync.WaitGroup
	for i := range workers {
		keepAlive := i%2 == 0
		tr := &http.Transport{
			DisableKeepAlives: !keepAlive,
			ForceAttemptHTTP2: true,
			TLSClientConfig: &tls.Config{RootCAs: pool, VerifyConnection: func(cs tls.ConnectionState) error {
				record(cs) // once per handshake: per connection
				return nil
			}},
		}
		client := &http.Client{Transport: tr, Timeout: time.Minute}
		wg.Go(func() {
			defer tr.CloseIdleConnections()
			for {
				if _, err := os.Stat(stop); err == nil {
					return
				}
				requests.Add(1)
				if err := fetch(client, url, want); err != nil {
					failures.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	var parts []string
	for s, n := range serials {
		parts = append(parts, fmt.Sprintf("%s:%d", s, n))
	}
	slices.Sort(parts)
	fmt.Printf("requests=%d failures=%d connections_by_serial=%s\n", requests.Load(), failures.Load(), strings.Join(parts, ","))
	if firstErr != nil {
		return fmt.Errorf("first failure: %w", firstErr)
	}
	return nil
}

func fetch(c *http.Client, url, want string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("body digest sha256:%s, want sha256:%s", got, want)
	}
	return nil
}
