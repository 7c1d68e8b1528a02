// Package ttl is a size-bounded LRU whose entries expire: golang-lru's
// Cache with an expiry checked on read. Unlike golang-lru's expirable
// package it starts no goroutine (that one's janitor can never be stopped),
// so nothing outlives its owner.
package ttl

import (
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Cache maps keys to values for at most a TTL each, keeping at most size entries.
type Cache[K comparable, V any] struct {
	c   *lru.Cache[K, entry[V]]
	ttl time.Duration
	now func() time.Time
}

type entry[V any] struct {
	v       V
	expires time.Time
}

// New returns a cache of at most size entries, each kept for ttl.
func New[K comparable, V any](size int, ttl time.Duration) *Cache[K, V] {
	c, err := lru.New[K, entry[V]](size)
	if err != nil {
		panic(err) // size <= 0: a programming error
	}
	return &Cache[K, V]{c: c, ttl: ttl, now: time.Now}
}

// Add stores v under k for the cache's TTL.
func (c *Cache[K, V]) Add(k K, v V) { c.AddFor(k, v, c.ttl) }

// AddFor stores v under k for d.
func (c *Cache[K, V]) AddFor(k K, v V, d time.Duration) {
	c.c.Add(k, entry[V]{v: v, expires: c.now().Add(d)})
}

// Get returns the value under k if it has not expired.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	e, ok := c.c.Get(k)
	if ok && c.now().Before(e.expires) {
		return e.v, true
	}
	if ok {
		c.c.Remove(k)
	}
	var zero V
	return zero, false
}

// Remove drops k.
func (c *Cache[K, V]) Remove(k K) { c.c.Remove(k) }

// Len is the number of entries, expired ones included until they are read
// or pushed out.
func (c *Cache[K, V]) Len() int { return c.c.Len() }
