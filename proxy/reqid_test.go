package proxy

import "testing"

// An id costs one allocation; a client's valid id costs none.
func BenchmarkRequestID(b *testing.B) {
	g := newRequestIDs()
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = g.requestID(nil)
		}
	})
	b.Run("client", func(b *testing.B) {
		in := []string{"0af7651916cd43dd8448eb211c80319c"}
		b.ReportAllocs()
		for b.Loop() {
			_ = g.requestID(in)
		}
	})
}
