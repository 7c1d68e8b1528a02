package main

import (
	"context"
	"fmt"
	"sync"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/bucket"
	"github.com/berth-dev/berth/internal/cluster"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// shared is what a replica shares with the others: the bucket holding
// local repositories and blobs, and the cluster that picks who downloads
// what. Both are nil with the filesystem driver on one node.
type shared struct {
	registry *bucket.Registry
	cluster  *cluster.Cluster
	source   *cluster.Source
	once     sync.Once
}

// openShared opens the bucket and joins the cluster that cfg configures.
func openShared(ctx context.Context, cfg Config, store *cache.Store, reg prometheus.Registerer, log zerolog.Logger) (*shared, error) {
	sh := &shared{}
	if cfg.Storage.Driver != "s3" {
		return sh, nil
	}
	s := cfg.Storage
	b, err := bucket.Open(ctx, bucket.Options{Endpoint: s.Endpoint, Bucket: s.Bucket, Region: s.Region, Prefix: s.Prefix,
		AccessKey: s.AccessKey, SecretKey: s.SecretKey, PathStyle: s.PathStyle, Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	sh.registry = bucket.NewRegistry(b, store, cfg.MaxManifestBytes)
	if !cfg.Cluster.Enabled() {
		return sh, nil
	}
	c := cfg.Cluster
	cl, err := cluster.New(cluster.Options{Self: c.Self, Members: c.Members, DNS: c.DNS, Secret: c.Secret,
		Logger: log.With().Str("component", "cluster").Logger(), Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if c.Secret == "" {
		log.Warn().Msg("cluster.secret_env is not set: the replicas' peer API (/_berth/cluster/) answers anyone who can reach it")
	}
	sh.cluster = cl
	sh.source = cluster.NewSource(cl, sh.registry, store, log)
	return sh, nil
}

// close leaves the cluster and waits for blobs being published; it may be
// called more than once.
func (sh *shared) close() {
	sh.once.Do(func() {
		if sh.source != nil {
			sh.source.Close()
		}
		if sh.cluster != nil {
			sh.cluster.Close()
		}
	})
}
