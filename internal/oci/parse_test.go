package oci

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

const (
	hex64  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	hex128 = hex64 + hex64
)

func TestValidName(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", MaxNameLength)
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"single", "alpine", true},
		{"multi-level", "team/project/app", true},
		{"separators", "a.b/c_d/e__f/g-h/i---j", true},
		{"digits", "0/1/2", true},
		{"max length", long, true},
		{"max length multi-level", strings.Repeat("ab/", 84) + "abc", true},
		{"too long", long + "a", false},
		{"too long multi-level", strings.Repeat("ab/", 85) + "a", false},
		{"empty", "", false},
		{"upper case", "Alpine", false},
		{"upper case component", "team/App", false},
		{"dot dot", "..", false},
		{"dot dot component", "a/../b", false},
		{"dot dot leading", "../a", false},
		{"dot component", "a/./b", false},
		{"empty element", "a//b", false},
		{"leading slash", "/a", false},
		{"trailing slash", "a/", false},
		{"only slash", "/", false},
		{"leading separator", "-a", false},
		{"trailing separator", "a-", false},
		{"triple underscore", "a___b", false},
		{"double dot separator", "a..b", false},
		{"mixed separator", "a.-b", false},
		{"colon", "a:b", false},
		{"at", "a@b", false},
		{"space", "a b", false},
		{"backslash", `a\b`, false},
		{"nul", "a\x00b", false},
		{"newline suffix", "a\n", false},
		{"non-ascii", "ä", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := ValidName(tt.in); got != tt.want {
				t.Errorf("ValidName(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestValidTag(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bool
	}{
		{"latest", true},
		{"v1.2.3", true},
		{"V1_RC-2", true},
		{"_x", true},
		{"0", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"", false},
		{".hidden", false},
		{"-dash", false},
		{"..", false},
		{"a/b", false},
		{"a:b", false},
		{"sha256:" + hex64, false},
		{"a b", false},
		{"a\n", false},
		{"a\x00", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			if got := ValidTag(tt.in); got != tt.want {
				t.Errorf("ValidTag(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		ok   bool
		alg  digest.Algorithm
	}{
		{"sha256", "sha256:" + hex64, true, digest.SHA256},
		{"sha512", "sha512:" + hex128, true, digest.SHA512},
		{"sha384 unsupported", "sha384:" + hex64 + hex64[:32], false, ""},
		{"md5", "md5:d41d8cd98f00b204e9800998ecf8427e", false, ""},
		{"unknown alg", "foo:" + hex64, false, ""},
		{"upper-case alg", "SHA256:" + hex64, false, ""},
		{"upper-case hex", "sha256:" + strings.ToUpper(hex64), false, ""},
		{"bad hex", "sha256:" + strings.Repeat("g", 64), false, ""},
		{"short", "sha256:" + hex64[:63], false, ""},
		{"long", "sha256:" + hex64 + "0", false, ""},
		{"sha512 with sha256 length", "sha512:" + hex64, false, ""},
		{"no algorithm", ":" + hex64, false, ""},
		{"no separator", "sha256" + hex64, false, ""},
		{"no hex", "sha256:", false, ""},
		{"bare hex", hex64, false, ""},
		{"empty", "", false, ""},
		{"trailing newline", "sha256:" + hex64 + "\n", false, ""},
		{"tag", "latest", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := ParseDigest(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("ParseDigest(%q) = %q, want error", tt.in, d)
				}
				var e *Error
				if !errors.As(err, &e) || e.Code != CodeDigestInvalid || e.Status() != 400 {
					t.Fatalf("ParseDigest(%q) error = %#v, want DIGEST_INVALID 400", tt.in, err)
				}
				if d != "" {
					t.Errorf("ParseDigest(%q) returned %q with an error", tt.in, d)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseDigest(%q): %v", tt.in, err)
			}
			if d.String() != tt.in || d.Algorithm() != tt.alg {
				t.Errorf("ParseDigest(%q) = %q (alg %s), want alg %s", tt.in, d, d.Algorithm(), tt.alg)
			}
		})
	}
}

func TestIsDigest(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{"sha256:" + hex64: true, "latest": false, "a:b": true, "": false} {
		if got := IsDigest(in); got != want {
			t.Errorf("IsDigest(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestParseRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in         string
		start, end int64
		ok         bool
	}{
		{"0-0", 0, 0, true},
		{"0-99", 0, 99, true},
		{"bytes=10-20", 10, 20, true},
		{"bytes 10-20", 10, 20, true},
		{"bytes 10-20/100", 10, 20, true},
		{"bytes 10-20/*", 10, 20, true},
		{"  5-6  ", 5, 6, true},
		{"0-9223372036854775807", 0, 9223372036854775807, true},
		{"", 0, 0, false},
		{"-", 0, 0, false},
		{"5", 0, 0, false},
		{"5-", 0, 0, false},
		{"bytes=5-", 0, 0, false},
		{"-5", 0, 0, false},
		{"bytes=-5", 0, 0, false},
		{"6-5", 0, 0, false},
		{"-1-5", 0, 0, false},
		{"a-b", 0, 0, false},
		{"1-b", 0, 0, false},
		{"0x1-2", 0, 0, false},
		{"1-2-3", 0, 0, false},
		{"bytes=0-1,3-4", 0, 0, false},
		{"1 -2", 0, 0, false},
		{"0-9223372036854775808", 0, 0, false},
		{"items=0-1", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			s, e, ok := ParseRange(tt.in)
			if s != tt.start || e != tt.end || ok != tt.ok {
				t.Errorf("ParseRange(%q) = %d, %d, %v; want %d, %d, %v", tt.in, s, e, ok, tt.start, tt.end, tt.ok)
			}
		})
	}
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"", "a", "a/b", "a//b", "/a", "a/", "..", "a/../b", "A", "a.b_c__d-e",
		"a___b", strings.Repeat("a", 255), strings.Repeat("a", 256), "a\x00b", "ä/b"} {
		f.Add(s)
	}
	component := regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	f.Fuzz(func(t *testing.T, s string) {
		want := s != "" && len(s) <= MaxNameLength
		for c := range strings.SplitSeq(s, "/") {
			want = want && component.MatchString(c)
		}
		if got := ValidName(s); got != want {
			t.Fatalf("ValidName(%q) = %v, the spec's grammar says %v", s, got, want)
		}
		if !want {
			return
		}
		if s == "" || len(s) > MaxNameLength {
			t.Fatalf("ValidName(%q) accepted a name of length %d", s, len(s))
		}
		for _, c := range strings.Split(s, "/") {
			if c == "" || c == "." || c == ".." {
				t.Fatalf("ValidName(%q) accepted component %q", s, c)
			}
			if !alnum(c[0]) || !alnum(c[len(c)-1]) {
				t.Fatalf("ValidName(%q): component %q does not start and end with [a-z0-9]", s, c)
			}
		}
		for i := 0; i < len(s); i++ {
			b := s[i]
			if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-' || b == '/') {
				t.Fatalf("ValidName(%q) accepted byte %q", s, b)
			}
		}
	})
}

func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{"", "sha256:" + hex64, "sha512:" + hex128, "md5:d41d8cd98f00b204e9800998ecf8427e",
		"sha256:" + strings.ToUpper(hex64), "sha256:" + hex64[:63], "sha384:" + hex64 + hex64[:32], "sha256:", ":", "a:b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDigest(s)
		if _, perr := digest.Parse(s); isSHA256(s) && perr != nil {
			t.Fatalf("ParseDigest's fast path accepted %q, which go-digest refuses: %v", s, perr)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeDigestInvalid {
				t.Fatalf("ParseDigest(%q) error %v is not DIGEST_INVALID", s, err)
			}
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("ParseDigest(%q) accepted a digest that fails Validate: %v", s, err)
		}
		if a := d.Algorithm(); a != digest.SHA256 && a != digest.SHA512 {
			t.Fatalf("ParseDigest(%q) accepted algorithm %q", s, a)
		}
		if d.String() != s {
			t.Fatalf("ParseDigest(%q) = %q", s, d)
		}
		if strings.ContainsAny(s, "/\x00.") {
			t.Fatalf("ParseDigest(%q) accepted a path-like digest", s)
		}
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"", "0-0", "bytes=0-99", "bytes 0-99/100", "5-", "-5", "6-5", "-1-2", "+1-+2",
		"0-9223372036854775807", "0-9223372036854775808", "bytes=0-1,2-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, ok := ParseRange(s)
		if !ok {
			if start != 0 || end != 0 {
				t.Fatalf("ParseRange(%q) = %d, %d with ok false", s, start, end)
			}
			return
		}
		if start < 0 || end < start {
			t.Fatalf("ParseRange(%q) = %d, %d: want 0 <= start <= end", s, start, end)
		}
	})
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in                string
		start, end, total int64
		ok                bool
	}{
		{"bytes 0-9/10", 0, 9, 10, true},
		{" bytes 5-9/* ", 5, 9, -1, true},
		{"bytes 0-0/1", 0, 0, 1, true},
		{"bytes 5-4/10", 0, 0, 0, false},
		{"bytes 5-10/10", 0, 0, 0, false},
		{"bytes 0-9", 0, 0, 0, false},
		{"bytes */10", 0, 0, 0, false},
		{"bytes=0-9/10", 0, 0, 0, false},
		{"0-9/10", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"bytes x-1/2", 0, 0, 0, false},
		{"bytes 0-1/+2", 0, 0, 0, false},
		{"bytes 0-1/-2", 0, 0, 0, false},
		{"bytes bytes=0-1/2", 0, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			s, e, tot, ok := ParseContentRange(tt.in)
			if s != tt.start || e != tt.end || tot != tt.total || ok != tt.ok {
				t.Errorf("ParseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d, %v", tt.in, s, e, tot, ok, tt.start, tt.end, tt.total, tt.ok)
			}
		})
	}
}

func TestResolveRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in         string
		size       int64
		start, end int64
		ok         bool
	}{
		{"bytes=0-99", 100, 0, 99, true},
		{"bytes=10-20", 100, 10, 20, true},
		{"bytes=90-200", 100, 90, 99, true},
		{"bytes=10-", 100, 10, 99, true},
		{"bytes=99-", 100, 99, 99, true},
		{"bytes=-10", 100, 90, 99, true},
		{"bytes=-200", 100, 0, 99, true},
		{" bytes=1-2 ", 100, 1, 2, true},
		{"bytes=100-", 100, 0, 0, false},
		{"bytes=100-200", 100, 0, 0, false},
		{"bytes=-0", 100, 0, 0, false},
		{"bytes=-", 100, 0, 0, false},
		{"bytes=0-1", 0, 0, 0, false},
		{"bytes=-5", 0, 0, 0, false},
		{"bytes=2-1", 100, 0, 0, false},
		{"bytes=0-1,3-4", 100, 0, 0, false},
		{"bytes=+1-", 100, 0, 0, false},
		{"bytes=0-1/100", 100, 0, 0, false},
		{"bytes 0-1", 100, 0, 0, false},
		{"0-1", 100, 0, 0, false},
		{"items=0-1", 100, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.in, tt.size), func(t *testing.T) {
			t.Parallel()
			s, e, ok := ResolveRange(tt.in, tt.size)
			if s != tt.start || e != tt.end || ok != tt.ok {
				t.Errorf("ResolveRange(%q, %d) = %d, %d, %v; want %d, %d, %v", tt.in, tt.size, s, e, ok, tt.start, tt.end, tt.ok)
			}
		})
	}
}

func FuzzResolveRange(f *testing.F) {
	for _, s := range []string{"bytes=0-99", "bytes=5-", "bytes=-5", "bytes=-0", "bytes=6-5", "bytes=0-1,2-3", "bytes=+1-"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, s string, size int64) {
		start, end, ok := ResolveRange(s, size)
		if !ok {
			if start != 0 || end != 0 {
				t.Fatalf("ResolveRange(%q, %d) = %d, %d with ok false", s, size, start, end)
			}
			return
		}
		if start < 0 || end < start || end >= size {
			t.Fatalf("ResolveRange(%q, %d) = %d, %d: want 0 <= start <= end < size", s, size, start, end)
		}
	})
}

func FuzzValidTag(f *testing.F) {
	for _, s := range []string{"", "latest", "v1.2.3", "_x", ".x", "-x", "A-b_c.d", strings.Repeat("a", 128), strings.Repeat("a", 129), "a/b", "a:b", "ä"} {
		f.Add(s)
	}
	tag := regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidTag(s), tag.MatchString(s); got != want {
			t.Fatalf("ValidTag(%q) = %v, the spec's grammar says %v", s, got, want)
		}
	})
}
