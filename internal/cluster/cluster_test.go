package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/bucket"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/upstream"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

func newCluster(t *testing.T, self string, members ...string) *Cluster {
	t.Helper()
	c, err := New(Options{Self: self, Members: members, Interval: 10 * time.Millisecond, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Ownership is rendezvous hashing: every replica computes the same owner
// from the same members; a member going down moves only its own keys, to
// the others, and they move back when it returns.
func TestOwnerRendezvous(t *testing.T) {
	members := []string{"http://10.0.0.1:5000", "http://10.0.0.2:5000", "http://10.0.0.3:5000"}
	cs := []*Cluster{}
	for _, m := range members {
		c, err := New(Options{Self: m, Members: members, Interval: time.Hour, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	// Close at once: New starts a first check, which must not mark the
	// unreachable example addresses down in this test.
	for _, c := range cs {
		c.Close()
		for _, m := range c.members {
			m.healthy.Store(true)
		}
	}
	owned := map[string]int{}
	keys := make([]string, 3000)
	before := make([]string, len(keys))
	for i := range keys {
		keys[i] = digest.FromString(fmt.Sprint(i)).String()
		before[i] = cs[0].Owner(keys[i])
		for _, c := range cs[1:] {
			if o := c.Owner(keys[i]); o != before[i] {
				t.Fatalf("replicas disagree on the owner of %s: %s and %s", keys[i], before[i], o)
			}
		}
		owned[before[i]]++
	}
	for _, m := range members {
		if n := owned[m]; n < 800 || n > 1200 {
			t.Errorf("%s owns %d of 3000 keys: not spread", m, n)
		}
	}
	cs[0].markDown(members[2])
	moved := 0
	for i, k := range keys {
		after := cs[0].Owner(k)
		switch {
		case after == members[2]:
			t.Fatalf("a down member still owns %s", k)
		case before[i] != members[2] && after != before[i]:
			t.Fatalf("%s moved from %s to %s though its owner is up", k, before[i], after)
		case before[i] == members[2]:
			moved++
		}
	}
	if moved != owned[members[2]] {
		t.Errorf("%d keys moved, want the %d the down member owned", moved, owned[members[2]])
	}
	cs[0].members[members[2]].healthy.Store(true)
	for i, k := range keys {
		if cs[0].Owner(k) != before[i] {
			t.Fatalf("%s did not move back to its owner", k)
		}
	}
}

// A member that stops answering its health check is taken out within a few
// checks, and comes back when it answers again.
func TestHealthChecks(t *testing.T) {
	var up atomic.Bool
	up.Store(true)
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer peer.Close()
	self := "http://127.0.0.1:1"
	c := newCluster(t, self, self, peer.URL)
	healthy := func() bool {
		for _, m := range c.Members() {
			if m.URL == peer.URL {
				return m.Healthy
			}
		}
		t.Fatal("peer is not a member")
		return false
	}
	waitFor(t, "peer healthy", func() bool { return healthy() })
	up.Store(false)
	waitFor(t, "peer marked down", func() bool { return !healthy() })
	for i := range 100 {
		if c.Owner(fmt.Sprint(i)) != self {
			t.Fatal("a down member owns a key")
		}
	}
	up.Store(true)
	waitFor(t, "peer back", func() bool { return healthy() })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// blobs is a BlobGetter with one blob.
type blobs struct {
	d    digest.Digest
	data []byte
	gets atomic.Int32
	peer atomic.Bool // the last request was marked as a peer's
}

func (b *blobs) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	b.gets.Add(1)
	b.peer.Store(registry.InfoFrom(ctx).Peer)
	if d != b.d {
		return nil, oci.Errorf(oci.CodeBlobUnknown, "blob unknown")
	}
	return registry.NewBytesReader(registry.Descriptor{Digest: d, Size: int64(len(b.data))}, b.data), nil
}

// noBucket is a bucket that has nothing.
type noBucket struct{}

func (noBucket) StatBlob(context.Context, digest.Digest) (int64, error) { return 0, bucket.ErrNotFound }
func (noBucket) Opener(digest.Digest) cache.FetchFunc                   { return nil }
func (noBucket) PublishFile(context.Context, digest.Digest, *os.File, int64, string) error {
	return nil
}

// A replica missing a blob it does not own streams it from the owner, who
// is asked as a peer (so it downloads it itself); the peer API wants the
// cluster's secret.
func TestSourceStreamsFromOwner(t *testing.T) {
	b := &blobs{}
	var ownerURL string
	owner := httptest.NewUnstartedServer(nil)
	ownerURL = "http://" + owner.Listener.Addr().String()
	self := "http://127.0.0.1:1" // never dialled: only peers are
	oc, err := New(Options{Self: ownerURL, Members: []string{ownerURL, self}, Secret: "s3cret", Interval: time.Hour, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	owner.Config.Handler = oc.Handler(func(name string) BlobGetter {
		if name == "docker.io" {
			return b
		}
		return nil
	})
	owner.Start()
	defer owner.Close()

	// Without the secret: refused.
	resp, err := http.Get(ownerURL + blobPath + "?upstream=docker.io&repo=library/x&digest=" + b.d.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("peer API without the secret: %s", resp.Status)
	}

	c, err := New(Options{Self: self, Members: []string{ownerURL, self}, Secret: "s3cret", Interval: time.Hour, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range c.members {
		m.healthy.Store(true)
	}
	// Blobs the owner owns (by this replica's view; the port is random).
	owned := func(seed string) []byte {
		for i := 0; ; i++ {
			data := bytes.Repeat([]byte(fmt.Sprint(seed, i)), 100000)
			if c.Owner(digest.FromBytes(data).String()) == ownerURL {
				return data
			}
		}
	}
	data := owned("berth")
	b.d, b.data = digest.FromBytes(data), data
	src := NewSource(c, noBucket{}, nil, zerolog.Nop())
	rc, size, from, err := src.OpenBlob(context.Background(), "docker.io", "library/x", b.d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if from != FromPeer || size != int64(len(data)) {
		t.Fatalf("from %s, size %d", from, size)
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatal("wrong bytes from the owner")
	}
	if !b.peer.Load() {
		t.Error("the owner was not asked as a peer: it would forward the request again")
	}
	src.mu.Lock()
	mine := src.downloads[b.d]
	src.mu.Unlock()
	if mine {
		t.Error("a blob streamed from its owner is recorded as this replica's download: Stored would publish it a second time")
	}
	// A blob the owner does not have is "not found", not a failure that
	// would make this replica download it too.
	_, _, from, err = src.OpenBlob(context.Background(), "docker.io", "library/x", digest.FromBytes(owned("other")), nil)
	if !errors.Is(err, upstream.ErrNotFound) || from != FromPeer {
		t.Fatalf("missing blob: from %s, %v", from, err)
	}
}

// failing is a BlobGetter whose stream breaks after n bytes, as a replica
// killed mid-download: first it stops listening.
type failing struct {
	blobs
	n    int
	stop func()
}

type breakingReader struct {
	registry.BlobReader
	left int
	stop func()
}

func (r *breakingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		r.stop()
		return 0, errors.New("killed")
	}
	if len(p) > r.left {
		p = p[:r.left]
	}
	n, err := r.BlobReader.Read(p)
	r.left -= n
	return n, err
}

func (f *failing) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	rd, err := f.blobs.GetBlob(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	return &breakingReader{BlobReader: rd, left: f.n, stop: f.stop}, nil
}

// The owner dies midway through streaming a blob: the replica that was
// reading from it becomes the owner and continues from the upstream at the
// offset it had reached, so its readers get every byte once.
func TestSourceTakesOverFromADeadOwner(t *testing.T) {
	owner := httptest.NewUnstartedServer(nil)
	ownerURL := "http://" + owner.Listener.Addr().String()
	self := "http://127.0.0.1:1"
	c, err := New(Options{Self: self, Members: []string{ownerURL, self}, Interval: time.Hour, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range c.members {
		m.healthy.Store(true)
	}
	var data []byte
	for i := 0; ; i++ {
		data = bytes.Repeat([]byte(fmt.Sprint("takeover", i)), 200000)
		if c.Owner(digest.FromBytes(data).String()) == ownerURL {
			break
		}
	}
	f := &failing{blobs: blobs{d: digest.FromBytes(data), data: data}, n: len(data) / 3,
		stop: func() { owner.Listener.Close() }}
	oc, err := New(Options{Self: ownerURL, Members: []string{ownerURL}, Interval: time.Hour, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	owner.Config.Handler = oc.Handler(func(string) BlobGetter { return f })
	owner.Start()
	defer owner.Close()

	var directAt atomic.Int64
	directAt.Store(-1)
	direct := func(_ context.Context, off int64) (io.ReadCloser, error) {
		directAt.Store(off)
		return io.NopCloser(bytes.NewReader(data[off:])), nil
	}
	src := NewSource(c, noBucket{}, nil, zerolog.Nop())
	rc, _, from, err := src.OpenBlob(context.Background(), "docker.io", "library/x", f.d, direct)
	if err != nil || from != FromPeer {
		t.Fatalf("from %s: %v", from, err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want the %d of the blob, whole", len(got), len(data))
	}
	if at := directAt.Load(); at <= 0 || at > int64(len(data)/3) {
		t.Errorf("the upstream was asked from offset %d, want where the owner's stream broke (<= %d)", at, len(data)/3)
	}
	if c.Owner(f.d.String()) != self {
		t.Error("the dead owner still owns the blob")
	}
	// The new owner downloaded the rest itself: Stored must publish it.
	src.mu.Lock()
	mine := src.downloads[f.d]
	src.mu.Unlock()
	if !mine {
		t.Error("the takeover is not recorded as this replica's download: Stored would not publish it to the bucket")
	}
}
