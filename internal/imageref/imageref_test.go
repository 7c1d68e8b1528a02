package imageref

import (
	"strings"
	"testing"
)

const dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want Ref
		str  string
	}{
		{"busybox", Ref{"docker.io", "library/busybox", "latest", ""}, "docker.io/library/busybox:latest"},
		{"busybox:1.36", Ref{"docker.io", "library/busybox", "1.36", ""}, "docker.io/library/busybox:1.36"},
		{"org/app", Ref{"docker.io", "org/app", "latest", ""}, "docker.io/org/app:latest"},
		{"docker.io/library/busybox", Ref{"docker.io", "library/busybox", "latest", ""}, "docker.io/library/busybox:latest"},
		{"index.docker.io/busybox", Ref{"docker.io", "library/busybox", "latest", ""}, "docker.io/library/busybox:latest"},
		{"ghcr.io/org/app:1.2", Ref{"ghcr.io", "org/app", "1.2", ""}, "ghcr.io/org/app:1.2"},
		{"ghcr.io/app", Ref{"ghcr.io", "app", "latest", ""}, "ghcr.io/app:latest"},
		{"registry.k8s.io/pause@" + dg, Ref{"registry.k8s.io", "pause", "", dg}, "registry.k8s.io/pause@" + dg},
		{"localhost:5000/team/app:1", Ref{"localhost:5000", "team/app", "1", ""}, "localhost:5000/team/app:1"},
		{"localhost/team/app", Ref{"localhost", "team/app", "latest", ""}, "localhost/team/app:latest"},
		{"quay.io/org/app:v1@" + dg, Ref{"quay.io", "org/app", "v1", dg}, "quay.io/org/app:v1@" + dg},
	} {
		got, err := Parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		if got.String() != tt.str {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, got.String(), tt.str)
		}
		if again, err := Parse(got.String()); err != nil || again != got {
			t.Errorf("Parse(%q) again = %+v, %v; not a fixed point", got.String(), again, err)
		}
	}
	for _, bad := range []string{"", "Busybox", "busybox:", "busybox:-x", "a//b", "busybox@sha256:12", "ghcr.io/", "ghcr.io/Org/app", "/app", "app/"} {
		if r, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", bad, r)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"busybox", "ghcr.io/org/app:1.2", "localhost:5000/a@" + dg, "a:b:c", "@", ":", "a/b/c:d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		if r.Registry == "" || r.Repository == "" || (r.Tag == "" && r.Digest == "") {
			t.Fatalf("Parse(%q) = %+v: a part is missing", s, r)
		}
		if strings.ContainsAny(r.Repository, ":@") || strings.Contains(r.Registry, "/") {
			t.Fatalf("Parse(%q) = %+v: parts run into each other", s, r)
		}
		again, err := Parse(r.String())
		if err != nil || again != r {
			t.Fatalf("Parse(%q) = %+v, but its String %q parses to %+v, %v", s, r, r.String(), again, err)
		}
	})
}
