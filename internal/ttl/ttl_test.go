package ttl

import (
	"testing"
	"time"
)

func TestExpiryAndBound(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	c := New[string, int](2, time.Minute)
	c.now = func() time.Time { return now }
	c.Add("a", 1)
	c.AddFor("b", 2, time.Hour)
	if v, ok := c.Get("a"); !ok || v != 1 {
		t.Fatalf("a = %v, %v; want 1, true", v, ok)
	}
	now = now.Add(2 * time.Minute)
	if _, ok := c.Get("a"); ok {
		t.Fatal("a outlived its TTL")
	}
	if v, ok := c.Get("b"); !ok || v != 2 {
		t.Fatalf("b = %v, %v; want 2, true (its own TTL)", v, ok)
	}
	c.Add("c", 3)
	c.Add("d", 4)
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want the bound 2", c.Len())
	}
	if _, ok := c.Get("b"); ok {
		t.Fatal("the least recently used entry was kept past the bound")
	}
}
