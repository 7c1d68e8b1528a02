package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/errgroup"
)

// The manifest-by-tag rate with berth's token flow on, against the same
// berth build with no authentication, in the same run: two berths of their
// own, the small image pushed to each, then the rate alternating between
// them every round. With tokens, every request carries a Bearer token that
// berth verifies and checks against the request's scope.
const (
	mAuthOffRPS = "manifest_tag_auth_off_rps"
	mAuthOnRPS  = "manifest_tag_token_rps"
	srvBerthTok = "berth-token"
)

func (b *bench) measureAuth(ctx context.Context) error {
	im := &b.content.small
	dir := filepath.Join(b.tmp, "auth")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("bench-pw"), bcrypt.MinCost)
	if err != nil {
		return err
	}
	ht := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(ht, []byte("bench:"+string(hash)+"\n"), 0o600); err != nil {
		return err
	}
	offCfg, onCfg := filepath.Join(dir, "off.yaml"), filepath.Join(dir, "on.yaml")
	if err := os.WriteFile(offCfg, []byte("upstreams: []\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(onCfg, []byte(fmt.Sprintf(`upstreams: []
auth:
  htpasswd: %s
  token: {ttl: 1h}
access:
  - repos: ["library/**"]
    subjects: [bench]
    actions: [pull, push]
`, ht)), 0o644); err != nil {
		return err
	}
	off, offURL, err := b.startBerth("auth-off", offCfg, filepath.Join(dir, "off-data"))
	if err != nil {
		return err
	}
	defer off.stop()
	on, onURL, err := b.startBerth("auth-token", onCfg, filepath.Join(dir, "on-data"))
	if err != nil {
		return err
	}
	defer on.stop()
	if err := pushImage(ctx, offURL, im, nil); err != nil {
		return fmt.Errorf("auth off: %w", err)
	}
	basic := http.Header{}
	req, _ := http.NewRequest(http.MethodGet, onURL, nil)
	req.SetBasicAuth("bench", "bench-pw")
	basic.Set("Authorization", req.Header.Get("Authorization"))
	if err := pushImage(ctx, onURL, im, basic); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	tok, err := fetchToken(ctx, onURL, basic, "repository:"+im.Repo+":pull")
	if err != nil {
		return err
	}
	bearer := http.Header{"Authorization": {"Bearer " + tok}}
	for r := range b.o.rounds {
		for i := range 2 {
			name, url, hdr, metric := srvBerth, offURL, http.Header(nil), mAuthOffRPS
			if (i+r)%2 == 1 {
				name, url, hdr, metric = srvBerthTok, onURL, bearer, mAuthOnRPS
			}
			res, err := rateHeader(ctx, []string{url + "/v2/" + im.Repo + "/manifests/" + im.Tag}, manifestAccept, hdr, b.o.conns, b.o.dur)
			if err != nil {
				return fmt.Errorf("%s manifest rate: %w", name, err)
			}
			b.samples.add(metric, srvBerth, res.rps)
			b.logf("  manifest by tag, %d conns, %-18s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d",
				b.o.conns, map[bool]string{true: "berth, token auth", false: "berth, no auth"}[name == srvBerthTok],
				res.rps, ms(res.p50), ms(res.p99), res.errors)
		}
	}
	return nil
}

// pushImage pushes im's blobs and manifest to base, with hdr on every
// request.
func pushImage(ctx context.Context, base string, im *image, hdr http.Header) error {
	client := newClient(4)
	defer client.CloseIdleConnections()
	if hdr != nil {
		client.Transport = headerTransport{client.Transport, hdr}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, bl := range append([]blob{im.Config}, im.Layers...) {
		g.Go(func() error { return pushBlob(gctx, client, base, im.Repo, bl) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return pushManifest(ctx, client, base, im)
}

// fetchToken asks berth's token endpoint for scope.
func fetchToken(ctx context.Context, base string, hdr http.Header, scope string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/token?service=berth&scope="+scope, nil)
	req.Header = hdr.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tr struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != http.StatusOK || tr.Token == "" {
		return "", fmt.Errorf("token endpoint: %s %v", resp.Status, err)
	}
	return tr.Token, nil
}

// headerTransport adds headers to every request.
type headerTransport struct {
	http.RoundTripper
	hdr http.Header
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.hdr {
		r.Header[k] = v
	}
	return t.RoundTripper.RoundTrip(r)
}
