package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// k8sDir holds the Kubernetes manifests this test checks.
const k8sDir = "../../deploy/kubernetes"

// k8sObject is one manifest document, kept as generic YAML.
type k8sObject map[string]any

func (o k8sObject) kind() string { return ystr(o, "kind") }
func (o k8sObject) name() string { return ystr(o, "metadata", "name") }

// get follows a path of map keys and list indexes through decoded YAML.
func yget(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				if o, ok2 := v.(k8sObject); ok2 {
					m = o
				} else {
					return nil
				}
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func ystr(v any, path ...any) string {
	s, _ := yget(v, path...).(string)
	return s
}

func ylist(v any, path ...any) []any {
	l, _ := yget(v, path...).([]any)
	return l
}

// loadK8s reads every document of every YAML file in dir.
func loadK8s(t *testing.T, dir string) (objs []k8sObject, files []string) {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in %s (%v)", dir, err)
	}
	for _, p := range paths {
		files = append(files, filepath.Base(p))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var m map[string]any
			if err := dec.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			o := k8sObject(m)
			if o == nil {
				continue
			}
			if o.kind() == "" {
				t.Fatalf("%s: a document without kind", p)
			}
			objs = append(objs, o)
		}
	}
	return objs, files
}

func k8sFind(t *testing.T, objs []k8sObject, kind, name string) k8sObject {
	t.Helper()
	for _, o := range objs {
		if o.kind() == kind && (name == "" || o.name() == name) {
			return o
		}
	}
	t.Fatalf("no %s %q in %s", kind, name, k8sDir)
	return nil
}

// TestKubernetesManifests checks that deploy/kubernetes/ is one consistent
// deployment: the ConfigMap's berth.yaml passes berth's own configuration
// loading with the environment the StatefulSet gives the container, and the
// names that tie the objects together agree.
func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	objs, files := loadK8s(t, k8sDir)

	// kubectl apply -k applies what the kustomization lists: all of it.
	kust := k8sFind(t, objs, "Kustomization", "")
	var res []string
	for _, r := range ylist(kust, "resources") {
		res = append(res, r.(string))
	}
	for _, f := range files {
		if f != "kustomization.yaml" && !slices.Contains(res, f) {
			t.Errorf("kustomization.yaml does not list %s", f)
		}
	}

	// One namespace, declared here, holds every object.
	nsObj := k8sFind(t, objs, "Namespace", "")
	for _, o := range objs {
		if o.kind() != "Namespace" && o.kind() != "Kustomization" && ystr(o, "metadata", "namespace") != nsObj.name() {
			t.Errorf("%s %s is in namespace %q, not %q", o.kind(), o.name(), ystr(o, "metadata", "namespace"), nsObj.name())
		}
	}

	sts := k8sFind(t, objs, "StatefulSet", "berth")
	if n, _ := yget(sts, "spec", "replicas").(int); n < 2 {
		t.Errorf("StatefulSet replicas = %v, want a cluster (>= 2)", yget(sts, "spec", "replicas"))
	}
	ns := ystr(sts, "metadata", "namespace")
	pod := yget(sts, "spec", "template")
	c := yget(pod, "spec", "containers", 0)
	if c == nil {
		t.Fatal("StatefulSet has no container")
	}

	// The configuration file, where the container reads it.
	cm := k8sFind(t, objs, "ConfigMap", "")
	text := ystr(cm, "data", "berth.yaml")
	if text == "" {
		t.Fatalf("ConfigMap %s has no data.berth.yaml", cm.name())
	}
	args := ylist(c, "args")
	cfgArg := ""
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			cfgArg, _ = args[i+1].(string)
		}
	}
	if cfgArg == "" {
		t.Fatalf("container args %v have no --config", args)
	}
	mounts := map[string]string{} // mount path -> volume name
	for _, m := range ylist(c, "volumeMounts") {
		mounts[ystr(m, "mountPath")] = ystr(m, "name")
	}
	vol := mounts[filepath.Dir(cfgArg)]
	cmVol := ""
	for _, v := range ylist(pod, "spec", "volumes") {
		if ystr(v, "name") == vol {
			cmVol = ystr(v, "configMap", "name")
		}
	}
	if cmVol != cm.name() || filepath.Base(cfgArg) != "berth.yaml" {
		t.Errorf("--config %s is not the ConfigMap %s's berth.yaml (mounted volume %q is ConfigMap %q)", cfgArg, cm.name(), vol, cmVol)
	}

	// The container's environment, as the kubelet resolves it: fields from
	// the downward API, secrets from the Secret (which must have the key),
	// $(VAR) from earlier variables.
	secrets := map[string]k8sObject{}
	for _, o := range objs {
		if o.kind() == "Secret" {
			secrets[o.name()] = o
		}
	}
	const podIP = "10.1.2.3"
	env := map[string]string{}
	fromSecret := map[string]bool{}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range ylist(c, "env") {
		name := ystr(e, "name")
		switch {
		case yget(e, "value") != nil:
			env[name] = ref.ReplaceAllStringFunc(ystr(e, "value"), func(m string) string {
				v, ok := env[m[2:len(m)-1]]
				if !ok {
					t.Errorf("env %s refers to %s, not defined before it", name, m)
				}
				return v
			})
		case ystr(e, "valueFrom", "fieldRef", "fieldPath") == "status.podIP":
			env[name] = podIP
		case yget(e, "valueFrom", "secretKeyRef") != nil:
			sn, sk := ystr(e, "valueFrom", "secretKeyRef", "name"), ystr(e, "valueFrom", "secretKeyRef", "key")
			s, ok := secrets[sn]
			if !ok {
				t.Errorf("env %s: Secret %q is not in %s", name, sn, k8sDir)
			} else if yget(s, "stringData", sk) == nil && yget(s, "data", sk) == nil {
				t.Errorf("env %s: Secret %s has no key %q", name, sn, sk)
			}
			env[name] = "value-of-" + sk
			fromSecret[name] = true
		default:
			t.Errorf("env %s: no value this test understands", name)
		}
	}

	// The configuration names env vars; the StatefulSet must set them, from
	// the Secret.
	var raw map[string]any
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatalf("berth.yaml: %v", err)
	}
	if ystr(raw, "storage", "driver") != "s3" || yget(raw, "cluster") == nil {
		t.Fatalf("berth.yaml has no storage.driver: s3 and cluster sections: %v", raw)
	}
	for _, k := range [][2]string{{"storage", "access_key_env"}, {"storage", "secret_key_env"}, {"cluster", "secret_env"}} {
		name := ystr(raw, k[0], k[1])
		if name == "" {
			t.Errorf("berth.yaml: %s.%s not set", k[0], k[1])
		} else if !fromSecret[name] {
			t.Errorf("berth.yaml %s.%s names %s, which the StatefulSet does not set from a Secret", k[0], k[1], name)
		}
	}
	if self := env["BERTH_CLUSTER_SELF"]; self != "http://"+podIP+":5000" {
		t.Errorf("BERTH_CLUSTER_SELF resolves to %q, want the pod's IP and berth's port (http://%s:5000)", self, podIP)
	}

	// Membership: cluster.dns is the headless Service, on berth's port.
	dns, err := url.Parse(ystr(raw, "cluster", "dns"))
	if err != nil || dns.Host == "" {
		t.Fatalf("cluster.dns %q: %v", ystr(raw, "cluster", "dns"), err)
	}
	svcName := ystr(sts, "spec", "serviceName")
	headless := k8sFind(t, objs, "Service", svcName)
	if ystr(headless, "spec", "clusterIP") != "None" {
		t.Errorf("Service %s (the StatefulSet's serviceName) is not headless", svcName)
	}
	if want := fmt.Sprintf("%s.%s.svc.cluster.local", svcName, ns); dns.Hostname() != want {
		t.Errorf("cluster.dns host %q, want the headless Service %q", dns.Hostname(), want)
	}
	addr := ystr(raw, "addr")
	if !strings.HasSuffix(addr, ":"+dns.Port()) {
		t.Errorf("cluster.dns port %q is not berth's addr %q", dns.Port(), addr)
	}
	for _, p := range ylist(c, "ports") {
		if ystr(p, "name") == "http" && fmt.Sprint(yget(p, "containerPort")) != strings.TrimPrefix(addr, ":") {
			t.Errorf("containerPort %v is not berth's addr %q", yget(p, "containerPort"), addr)
		}
	}
	labels := yget(pod, "metadata", "labels").(map[string]any)
	for _, o := range objs {
		if o.kind() != "Service" {
			continue
		}
		for k, v := range yget(o, "spec", "selector").(map[string]any) {
			if labels[k] != v {
				t.Errorf("Service %s selects %s=%v, which the pods do not have", o.name(), k, v)
			}
		}
	}

	// Probes and the cache volume.
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := ystr(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %q, want %s", probe, got, path)
		}
	}
	if yget(c, "resources", "requests", "memory") == nil || yget(c, "resources", "requests", "cpu") == nil {
		t.Error("container has no resource requests")
	}
	data := ystr(raw, "data")
	claim := ystr(sts, "spec", "volumeClaimTemplates", 0, "metadata", "name")
	if mounts[data] == "" || mounts[data] != claim {
		t.Errorf("data dir %s is not the PVC template %q (mounted there: %q)", data, claim, mounts[data])
	}

	// Finally berth's own loading and validation of the file, with that
	// environment: an unknown key or a refused value fails here.
	path := filepath.Join(t.TempDir(), "berth.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig([]string{"--config", path}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("berth refuses the ConfigMap's berth.yaml: %v", err)
	}
	// What a replica runs with: the pod's own URL, the secrets from the Secret.
	if cfg.Storage.Driver != "s3" || cfg.Cluster.Self != "http://"+podIP+":5000" || cfg.Cluster.DNS != dns.String() {
		t.Errorf("loaded storage.driver %q, cluster.self %q, cluster.dns %q", cfg.Storage.Driver, cfg.Cluster.Self, cfg.Cluster.DNS)
	}
	if cfg.Storage.AccessKey != "value-of-s3-access-key" || cfg.Storage.SecretKey != "value-of-s3-secret-key" || cfg.Cluster.Secret != "value-of-cluster-secret" {
		t.Errorf("credentials not from the Secret: access %q, secret %q, cluster %q", cfg.Storage.AccessKey, cfg.Storage.SecretKey, cfg.Cluster.Secret)
	}
}
