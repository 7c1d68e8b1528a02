// Package bucket is berth's storage driver for an S3-compatible bucket: the
// shared, durable truth of a cluster of replicas. Blobs (manifests
// included) and the state of local repositories (links, manifests, tags,
// referrers, uploads in progress) live in the bucket; each replica keeps
// its Badger index and blob files as a bounded, rebuildable cache in front
// of it (package cache), and serves warm content from local disk.
//
// Bucket is the client (minio-go v7, see docs/design.md for why), Registry
// the local repositories as a registry.Interface over it.
package bucket

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrNotFound is returned for a key the bucket does not have.
var ErrNotFound = errors.New("not in the bucket")

// ErrExists is returned by PutIfAbsent for a key someone wrote first.
var ErrExists = errors.New("already in the bucket")

// Options configure a Bucket.
type Options struct {
	Endpoint  string // http(s)://host:port
	Bucket    string
	Region    string
	Prefix    string // key prefix inside the bucket ("" or ending in "/")
	AccessKey string
	SecretKey string
	PathStyle bool
	// Registerer receives the bucket's metrics; nil counts nothing.
	Registerer prometheus.Registerer
}

// Bucket is a bucket under a key prefix.
type Bucket struct {
	c      *minio.Client
	bucket string
	prefix string
	ops    *prometheus.CounterVec
	bytes  *prometheus.CounterVec
}

// singlePutMax is the largest object written in one PUT (S3's limit is 5
// GiB); larger ones are multipart, with one part buffer of partSize.
const (
	singlePutMax = 5 << 30
	partSize     = 16 << 20
)

// Open connects to the bucket and checks that it exists and answers.
func Open(ctx context.Context, o Options) (*Bucket, error) {
	u, err := url.Parse(o.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("endpoint %q: want http(s)://host[:port]", o.Endpoint)
	}
	lookup := minio.BucketLookupDNS
	if o.PathStyle {
		lookup = minio.BucketLookupPath
	}
	tr, err := minio.DefaultTransport(u.Scheme == "https")
	if err != nil {
		return nil, err
	}
	tr.MaxIdleConnsPerHost = 64
	tr.ResponseHeaderTimeout = 30 * time.Second
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(o.AccessKey, o.SecretKey, ""),
		Secure:       u.Scheme == "https",
		Region:       o.Region,
		BucketLookup: lookup,
		Transport:    tr,
	})
	if err != nil {
		return nil, err
	}
	b := &Bucket{c: c, bucket: o.Bucket, prefix: o.Prefix,
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_bucket_requests_total",
			Help: "Requests to the S3 bucket by operation and result (ok, not_found, conflict, error)."}, []string{"op", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_bucket_bytes_total",
			Help: "Bytes written to (out) and read from (in) the S3 bucket."}, []string{"direction"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(b.ops, b.bytes)
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ok, err := c.BucketExists(cctx, o.Bucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s at %s: %w", o.Bucket, o.Endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("bucket %s does not exist at %s", o.Bucket, o.Endpoint)
	}
	return b, nil
}

func (b *Bucket) key(k string) string { return b.prefix + k }

// count records one request and maps minio's errors to ours.
func (b *Bucket) count(op string, err error) error {
	switch {
	case err == nil:
		b.ops.WithLabelValues(op, "ok").Inc()
		return nil
	case isNotFound(err):
		b.ops.WithLabelValues(op, "not_found").Inc()
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case isPrecondition(err):
		b.ops.WithLabelValues(op, "conflict").Inc()
		return fmt.Errorf("%w: %v", ErrExists, err)
	}
	b.ops.WithLabelValues(op, "error").Inc()
	// The bucket failing is the server's trouble, not the client's: 503,
	// so that clients retry (through another replica, if one can).
	return &oci.Error{Code: oci.CodeUnavailable, HTTPStatus: http.StatusServiceUnavailable,
		Message: "the storage bucket is unavailable; retry", Cause: fmt.Errorf("bucket %s: %w", op, err)}
}

func isNotFound(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey" || r.Code == "NotFound"
}

func isPrecondition(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed"
}

func putOptions(size int64) minio.PutObjectOptions {
	o := minio.PutObjectOptions{ContentType: "application/octet-stream", NumThreads: 1, PartSize: partSize}
	if size >= 0 && size <= singlePutMax {
		o.DisableMultipart = true
	}
	return o
}

// Put writes r (size bytes; -1 if unknown) at k, replacing what is there.
// The object appears whole or not at all.
func (b *Bucket) Put(ctx context.Context, k string, r io.Reader, size int64) error {
	info, err := b.c.PutObject(ctx, b.bucket, b.key(k), r, size, putOptions(size))
	if err == nil {
		b.bytes.WithLabelValues("out").Add(float64(info.Size))
	}
	return b.count("put", err)
}

// PutIfAbsent is Put, unless k exists: then ErrExists (S3's If-None-Match).
func (b *Bucket) PutIfAbsent(ctx context.Context, k string, r io.Reader, size int64) error {
	return b.PutFrom(ctx, k, r, size, "")
}

// PutBytes writes a small object.
func (b *Bucket) PutBytes(ctx context.Context, k string, v []byte) error {
	return b.Put(ctx, k, bytes.NewReader(v), int64(len(v)))
}

// Get opens k from offset on. The first request is made here, so a missing
// key is ErrNotFound now rather than at the first Read.
func (b *Bucket) Get(ctx context.Context, k string, offset int64) (io.ReadCloser, error) {
	var o minio.GetObjectOptions
	if offset > 0 {
		if err := o.SetRange(offset, 0); err != nil {
			return nil, err
		}
	}
	obj, err := b.c.GetObject(ctx, b.bucket, b.key(k), o)
	if err == nil {
		_, err = obj.Stat()
	}
	if err != nil {
		if obj != nil {
			obj.Close()
		}
		return nil, b.count("get", err)
	}
	b.count("get", nil)
	return &counted{ReadCloser: obj, c: b.bytes.WithLabelValues("in")}, nil
}

type counted struct {
	io.ReadCloser
	c prometheus.Counter
}

func (r *counted) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.c.Add(float64(n))
	return n, err
}

// GetBytes reads a small object whole; one larger than limit is an error.
func (b *Bucket) GetBytes(ctx context.Context, k string, limit int64) ([]byte, error) {
	rc, err := b.Get(ctx, k, 0)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	v, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("bucket get %s: %w", k, err)
	}
	if int64(len(v)) > limit {
		return nil, fmt.Errorf("bucket object %s is larger than %d bytes", k, limit)
	}
	return v, nil
}

// Stat returns the size of k.
func (b *Bucket) Stat(ctx context.Context, k string) (int64, error) {
	o, err := b.StatObject(ctx, k)
	return o.Size, err
}

// StatObject returns what the bucket knows of k: its size, when it was
// last written, and its berth metadata (the origin of a mirrored blob).
func (b *Bucket) StatObject(ctx context.Context, k string) (ObjectInfo, error) {
	info, err := b.c.StatObject(ctx, b.bucket, b.key(k), minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, b.count("stat", err)
	}
	b.count("stat", nil)
	return ObjectInfo{Object: Object{Key: k, Size: info.Size, Modified: info.LastModified}, Origin: info.UserMetadata[originMeta]}, nil
}

// ObjectInfo is a stated object.
type ObjectInfo struct {
	Object
	// Origin is the upstream a mirrored blob came from ("" for pushed content).
	Origin string
}

// originMeta is the user metadata naming the upstream of a mirrored blob
// (x-amz-meta-berth-origin), as minio-go reports it.
const originMeta = "Berth-Origin"

// PutFrom is PutIfAbsent of a blob that came from upstream origin ("" for
// pushed content): the collector keeps what was mirrored (the caches'
// eviction bounds it on each replica).
func (b *Bucket) PutFrom(ctx context.Context, k string, r io.Reader, size int64, origin string) error {
	o := putOptions(size)
	o.SetMatchETagExcept("*")
	if origin != "" {
		o.UserMetadata = map[string]string{originMeta: origin}
	}
	info, err := b.c.PutObject(ctx, b.bucket, b.key(k), r, size, o)
	if err == nil {
		b.bytes.WithLabelValues("out").Add(float64(info.Size))
	}
	return b.count("put", err)
}

// Delete removes k; a missing key is not an error.
func (b *Bucket) Delete(ctx context.Context, k string) error {
	err := b.c.RemoveObject(ctx, b.bucket, b.key(k), minio.RemoveObjectOptions{})
	if isNotFound(err) {
		err = nil
	}
	return b.count("delete", err)
}

// Object is a listed key (without the bucket's prefix), its size and when
// it was last written.
type Object struct {
	Key      string
	Size     int64
	Modified time.Time
}

// List returns up to max keys under p (recursive), in order, after
// startAfter (a full key under p, or ""); more reports that there are
// others. max < 0 lists all.
func (b *Bucket) List(ctx context.Context, p, startAfter string, max int) (objs []Object, more bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the lister's goroutine when we stop early
	o := minio.ListObjectsOptions{Prefix: b.key(p), Recursive: true}
	if startAfter != "" {
		o.StartAfter = b.key(startAfter)
	}
	if max > 0 && max < 1000 {
		o.MaxKeys = max + 1
	}
	for info := range b.c.ListObjects(ctx, b.bucket, o) {
		if info.Err != nil {
			return nil, false, b.count("list", info.Err)
		}
		if max >= 0 && len(objs) == max {
			b.count("list", nil)
			return objs, true, nil
		}
		objs = append(objs, Object{Key: strings.TrimPrefix(info.Key, b.prefix), Size: info.Size, Modified: info.LastModified})
	}
	b.count("list", nil)
	return objs, false, nil
}

// DeletePrefix removes every key under p.
func (b *Bucket) DeletePrefix(ctx context.Context, p string) error {
	objs, _, err := b.List(ctx, p, "", -1)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := b.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}
