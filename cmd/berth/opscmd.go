package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/regclient"
)

// The operator's commands: each is one request to a running berth's admin
// API (see admin.go and gc.go), printed as a table or, with --json, as the
// server's JSON answer.

const opsFlags = `
  --server URL        the berth (BERTH_SERVER; default http://127.0.0.1:5000)
  --json              print the server's JSON answer instead of a table
  --username USER     with --password-stdin: credentials for berth (default:
                      the docker config's auths entry for the server's host)
  --password-stdin    read the password from the first line of stdin`

const lsUsage = `usage: berth ls [--server URL] [--json] [REPO]

Lists the repositories a running berth holds (origin local or the upstream
it mirrors, tags, bytes, last push and pull), or with REPO its tags.
Mirrored repositories are named <upstream>/<name>, e.g. docker.io/library/alpine.` + opsFlags

const duUsage = `usage: berth du [--server URL] [--json]

Shows the bytes a running berth holds: local (pushed) content, mirrored
content by upstream, blobs nothing links yet (the next gc's work), the
total, and max_cache_bytes.` + opsFlags

const rmUsage = `usage: berth rm [--server URL] [--json] [--tag-only] REPO:TAG | REPO@DIGEST

Local repository: removes the tag (and its manifest if no other tag or index
needs it), or the manifest or blob DIGEST; the next gc frees the bytes.
Mirrored repository (REPO as berth ls names it): purges the image the tag
points at (manifest, every tag on it, and the blobs nothing else holds), or
the manifest or blob DIGEST, at once; the next pull fetches it again.

  --tag-only          remove only the tag, not the image` + opsFlags

const gcUsage = `usage: berth gc [--server URL] [--json] [--dry-run] [--grace DURATION]

Runs a garbage collection of local content now: tags and untagged manifests
the retention rules expire, blobs nothing references (older than the grace
period), empty repositories and idle uploads. Prints what it removed.

  --dry-run           list what would be removed; remove nothing
  --grace DURATION    keep blobs uploaded or linked this recently
                      (default: the server's gc.grace)` + opsFlags

const revalidateUsage = `usage: berth revalidate [--server URL] [--json] REPO:TAG

Makes a mirrored tag stale: the next pull asks its upstream whatever the
upstream's tag_ttl.` + opsFlags

// opsCommand parses the common flags and at most maxArgs arguments.
type opsCommand struct {
	name string
	cf   clientFlags
	json *bool
	fs   *flag.FlagSet
}

func newOps(name string, s stdio) *opsCommand {
	o := &opsCommand{name: name, fs: flag.NewFlagSet("berth "+name, flag.ContinueOnError)}
	o.fs.SetOutput(io.Discard)
	o.cf.register(o.fs, s.getenv)
	o.json = o.fs.Bool("json", false, "")
	return o
}

// parse returns the positional arguments; help is true after --help was printed.
func (o *opsCommand) parse(args []string, usage string, s stdio, minArgs, maxArgs int) (pos []string, help bool, err error) {
	pos, err = parseArgs(o.fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(s.out, usage)
		return nil, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w (berth %s --help lists the flags)", err, o.name)
	}
	if len(pos) < minArgs || len(pos) > maxArgs {
		return nil, false, errors.New(strings.SplitN(usage, "\n", 2)[0])
	}
	return pos, false, nil
}

// call sends the request and decodes the answer into out; with --json it
// prints the answer as the server sent it (indented) instead.
func (o *opsCommand) call(ctx context.Context, s stdio, method, path string, q url.Values, out any) (printed bool, err error) {
	c, err := o.cf.client(s)
	if err != nil {
		return false, err
	}
	var raw json.RawMessage
	if err := c.Call(ctx, method, path, q, &raw); err != nil {
		return false, explain(err)
	}
	if *o.json {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return false, err
		}
		b, _ := json.MarshalIndent(v, "", "  ")
		_, err := fmt.Fprintln(s.out, string(b))
		return true, err
	}
	return false, json.Unmarshal(raw, out)
}

// explain adds what to do to the errors an operator meets.
func explain(err error) error {
	var re *regclient.Error
	if errors.As(err, &re) && re.Status == http.StatusUnauthorized {
		return fmt.Errorf("%w: the admin API needs the credentials a push needs (--username and --password-stdin, or docker login)", err)
	}
	return err
}

func lsCmd(ctx context.Context, args []string, s stdio) error {
	o := newOps("ls", s)
	pos, help, err := o.parse(args, lsUsage, s, 0, 1)
	if err != nil || help {
		return err
	}
	if len(pos) == 0 {
		var ans struct{ Repos []cache.RepoInfo }
		if printed, err := o.call(ctx, s, http.MethodGet, "/admin/repos", nil, &ans); err != nil || printed {
			return err
		}
		tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "REPOSITORY\tORIGIN\tTAGS\tSIZE\tLAST PUSHED\tLAST PULLED")
		for _, r := range ans.Repos {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.Name, r.Origin, r.Tags, humanBytes(r.Bytes), ago(r.LastPushed), ago(r.LastPulled))
		}
		return tw.Flush()
	}
	var ans struct {
		Name string
		Tags []cache.TagInfo
	}
	if printed, err := o.call(ctx, s, http.MethodGet, "/admin/tags", url.Values{"repo": {pos[0]}}, &ans); err != nil || printed {
		return err
	}
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TAG\tDIGEST\tSIZE\tPUSHED\tLAST PULLED")
	for _, t := range ans.Tags {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Tag, shortDigest(string(t.Digest)), humanBytes(t.Bytes), ago(t.Pushed), ago(t.Pulled))
	}
	return tw.Flush()
}

func duCmd(ctx context.Context, args []string, s stdio) error {
	o := newOps("du", s)
	if _, help, err := o.parse(args, duUsage, s, 0, 0); err != nil || help {
		return err
	}
	var du cache.DiskUsage
	if printed, err := o.call(ctx, s, http.MethodGet, "/admin/du", nil, &du); err != nil || printed {
		return err
	}
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tBYTES\tSIZE\t")
	row := func(name string, n int64) { fmt.Fprintf(tw, "%s\t%d\t%s\t\n", name, n, humanBytes(n)) }
	row("local", du.Local)
	ups := make([]string, 0, len(du.Upstreams))
	for u := range du.Upstreams {
		ups = append(ups, u)
	}
	slices.Sort(ups)
	for _, u := range ups {
		row(u, du.Upstreams[u])
	}
	row("unreferenced", du.Unreferenced)
	row("total", du.Total)
	if du.Limit > 0 {
		row("limit (mirrored)", du.Limit)
	} else {
		fmt.Fprintf(tw, "limit (mirrored)\t-\tunbounded\t\n")
	}
	return tw.Flush()
}

// splitRef splits REPO:TAG or REPO@DIGEST; a leading host equal to the
// server's is dropped (localhost:5000/team/app:1 names team/app).
func splitRef(ref, serverHost string) (repo, tagOrDigest string, err error) {
	if h, rest, ok := strings.Cut(ref, "/"); ok && h == serverHost {
		ref = rest
	}
	if r, d, ok := strings.Cut(ref, "@"); ok {
		return r, d, nil
	}
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return "", "", fmt.Errorf("%q names no tag or digest: write REPO:TAG or REPO@DIGEST", ref)
	}
	return ref[:i], ref[i+1:], nil
}

func serverHost(server string) string {
	u, err := url.Parse(server)
	if err != nil {
		return ""
	}
	return u.Host
}

func rmCmd(ctx context.Context, args []string, s stdio) error {
	o := newOps("rm", s)
	tagOnly := o.fs.Bool("tag-only", false, "")
	pos, help, err := o.parse(args, rmUsage, s, 1, 1)
	if err != nil || help {
		return err
	}
	repo, ref, err := splitRef(pos[0], serverHost(o.cf.server))
	if err != nil {
		return err
	}
	q := url.Values{"repo": {repo}, "ref": {ref}}
	if *tagOnly {
		q.Set("tag_only", "true")
	}
	var res rmResult
	if printed, err := o.call(ctx, s, http.MethodDelete, "/admin/ref", q, &res); err != nil || printed {
		return err
	}
	for _, t := range res.Tags {
		fmt.Fprintf(s.out, "removed tag %s:%s\n", res.Repo, t)
	}
	for _, m := range res.Manifests {
		fmt.Fprintf(s.out, "removed manifest %s@%s\n", res.Repo, m)
	}
	for _, b := range res.Blobs {
		fmt.Fprintf(s.out, "removed blob %s (%s)\n", b.Digest, humanBytes(b.Size))
	}
	if res.Unlinked > 0 {
		fmt.Fprintf(s.out, "unlinked %d blob(s) other repositories still hold\n", res.Unlinked)
	}
	fmt.Fprintf(s.out, "freed %s now (%s repository); %s\n", humanBytes(res.Bytes), res.Origin, res.Note)
	return nil
}

func gcCmd(ctx context.Context, args []string, s stdio) error {
	o := newOps("gc", s)
	dry := o.fs.Bool("dry-run", false, "")
	grace := o.fs.String("grace", "", "")
	if _, help, err := o.parse(args, gcUsage, s, 0, 0); err != nil || help {
		return err
	}
	q := url.Values{}
	if *dry {
		q.Set("dry_run", "true")
	}
	if *grace != "" {
		if _, err := parseDuration(*grace); err != nil {
			return fmt.Errorf("--grace: %w", err)
		}
		q.Set("grace", *grace)
	}
	var rep cache.GCReport
	done := spinner(s, "garbage collection")
	printed, err := o.call(ctx, s, http.MethodPost, "/admin/gc", q, &rep)
	done()
	if err != nil || printed {
		return err
	}
	verb := "removed"
	if rep.DryRun {
		verb = "would remove"
	}
	for _, t := range rep.Tags {
		fmt.Fprintf(s.out, "%s tag %s:%s: %s\n", verb, t.Repo, t.Tag, t.Reason)
	}
	for _, m := range rep.Manifests {
		fmt.Fprintf(s.out, "%s manifest %s@%s: %s\n", verb, m.Repo, m.Digest, m.Reason)
	}
	for _, b := range rep.Blobs {
		fmt.Fprintf(s.out, "%s blob %s (%s)\n", verb, b.Digest, humanBytes(b.Size))
	}
	for _, u := range rep.Uploads {
		fmt.Fprintf(s.out, "%s upload %s (%s)\n", verb, u.Upload, humanBytes(u.Size))
	}
	for _, r := range rep.Repos {
		fmt.Fprintf(s.out, "%s empty repository %s\n", verb, r)
	}
	fmt.Fprintf(s.out, "%s %d blobs, %d manifests, %d tags, %d uploads, %d repositories: %s in %.1fs\n", verb,
		len(rep.Blobs), len(rep.Manifests), len(rep.Tags), len(rep.Uploads), len(rep.Repos), humanBytes(rep.Bytes), rep.Seconds)
	return nil
}

func revalidateCmd(ctx context.Context, args []string, s stdio) error {
	o := newOps("revalidate", s)
	pos, help, err := o.parse(args, revalidateUsage, s, 1, 1)
	if err != nil || help {
		return err
	}
	repo, tag, err := splitRef(pos[0], serverHost(o.cf.server))
	if err != nil {
		return err
	}
	var ans map[string]string
	if printed, err := o.call(ctx, s, http.MethodPost, "/admin/revalidate", url.Values{"repo": {repo}, "tag": {tag}}, &ans); err != nil || printed {
		return err
	}
	fmt.Fprintf(s.out, "%s:%s: %s\n", repo, tag, ans["status"])
	return nil
}

// spinner shows, on a terminal, that a long request is running and for how
// long (a collection of a large store reads every manifest); done removes it.
func spinner(s stdio, what string) (done func()) {
	if !s.tty {
		return func() {}
	}
	p := mpb.New(mpb.WithOutput(s.err), mpb.WithRefreshRate(200*time.Millisecond))
	bar := p.New(0, mpb.SpinnerStyle(), mpb.BarRemoveOnComplete(),
		mpb.PrependDecorators(decor.Name(what+" ")), mpb.AppendDecorators(decor.Elapsed(decor.ET_STYLE_GO)))
	return func() {
		bar.SetTotal(-1, true)
		p.Wait()
	}
}

// ago prints how long ago t was, or - for never.
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func shortDigest(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	return d
}
