package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// parseUnit reads a systemd unit file as systemd.syntax(7) describes it:
// [Section] headers, Key=Value lines, '#' and ';' comments, a trailing
// backslash continuing a line. A key given twice keeps both values.
func parseUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unit := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		for strings.HasSuffix(line, `\`) && sc.Scan() {
			n++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(sc.Text())
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			unit[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a Key=Value line in a section: %q", path, n, line)
			}
			k = strings.TrimSpace(k)
			unit[section][k] = append(unit[section][k], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return unit
}

// The shipped unit waits for berth's readiness and keeps its sandbox: the
// keys that bring `systemd-analyze security` from 7.9 EXPOSED to OK.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	unit := parseUnit(t, filepath.Join("..", "..", "deploy", "systemd", "berth.service"))
	svc := unit["Service"]
	if svc == nil {
		t.Fatal("no [Service] section")
	}
	last := func(k string) string {
		if v := svc[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	if got := last("Type"); got != "notify" {
		t.Errorf("Type=%q, want notify", got)
	}
	if got := last("NotifyAccess"); got != "" && got != "main" {
		t.Errorf("NotifyAccess=%q: only berth itself sends the readiness message", got)
	}
	exec := strings.Fields(last("ExecStart"))
	if len(exec) < 2 || filepath.Base(exec[0]) != "berth" || exec[1] != "serve" {
		t.Errorf("ExecStart=%q, want berth serve ...", last("ExecStart"))
	}
	if unit["Install"]["WantedBy"] == nil {
		t.Error("no [Install] WantedBy=")
	}

	// The data directory is the one writable place, and berth is told so.
	data := ""
	for _, e := range svc["Environment"] {
		for _, kv := range strings.Fields(e) {
			if v, ok := strings.CutPrefix(strings.Trim(kv, `"`), "BERTH_DATA="); ok {
				data = v
			}
		}
	}
	if data == "" {
		t.Error("no Environment=BERTH_DATA=...")
	}
	if rw := strings.Fields(last("ReadWritePaths")); !slices.Contains(rw, data) {
		t.Errorf("ReadWritePaths=%v does not include BERTH_DATA %q", rw, data)
	}

	for _, k := range []string{"User", "Group"} {
		if v := last(k); v == "" || v == "root" || v == "0" {
			if last("DynamicUser") != "yes" {
				t.Errorf("%s=%q: berth needs no root", k, v)
			}
		}
	}
	want := map[string]string{
		"NoNewPrivileges":         "yes",
		"CapabilityBoundingSet":   "",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"PrivateUsers":            "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"ProtectClock":            "yes",
		"ProtectHostname":         "yes",
		"RestrictNamespaces":      "yes",
		"RestrictRealtime":        "yes",
		"RestrictSUIDSGID":        "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	}
	for k, v := range want {
		if got, ok := svc[k]; !ok || last(k) != v {
			t.Errorf("%s=%q (set: %v), want %q", k, last(k), got, v)
		}
	}
	if !slices.Contains(svc["SystemCallFilter"], "@system-service") {
		t.Errorf("SystemCallFilter=%v, want an allow list of @system-service", svc["SystemCallFilter"])
	}
	if u := last("UMask"); u == "" || u[len(u)-1] != '7' {
		t.Errorf("UMask=%q, want one that gives others nothing (0027, 0077)", u)
	}
}
