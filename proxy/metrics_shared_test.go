package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/berth-dev/berth/internal/registry/regmem"
	"github.com/berth-dev/berth/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Handlers built one after another on the same Metrics (a configuration
// reload) register the series once and count into the same ones.
func TestMetricsSharedAcrossHandlers(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	met := proxy.NewMetrics(reg)
	for range 2 {
		h := proxy.New(proxy.Options{Registry: regmem.New(), Logger: zerolog.Nop(), Registerer: reg, Metrics: met})
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/v2/", nil))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "berth_http_requests_total" {
			if len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetCounter().GetValue() != 2 {
				t.Errorf("berth_http_requests_total = %v, want one series at 2", mf.GetMetric())
			}
			return
		}
	}
	t.Error("berth_http_requests_total not exported")
}
