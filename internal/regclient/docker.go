package regclient

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DockerCredentials returns the credentials the docker config file
// ($DOCKER_CONFIG/config.json, else $HOME/.docker/config.json) holds for host
// in its auths, if any; getenv reads the environment (os.Getenv). Credential
// helpers are not run.
func DockerCredentials(host string, getenv func(string) string) (user, pass string, ok bool, err error) {
	dir := getenv("DOCKER_CONFIG")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", "", false, nil
		}
		dir = filepath.Join(home, ".docker")
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if errors.Is(err, os.ErrNotExist) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, err
	}
	var cfg struct {
		Auths map[string]struct {
			Auth     string `json:"auth"`
			Username string `json:"username"`
			Password string `json:"password"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", "", false, fmt.Errorf("%s: %w", filepath.Join(dir, "config.json"), err)
	}
	for k, a := range cfg.Auths {
		// Keys are hosts, or URLs of them (https://host/v1/).
		h := strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
		h, _, _ = strings.Cut(h, "/")
		if h != host {
			continue
		}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return "", "", false, fmt.Errorf("docker config: auths[%q].auth is not base64", k)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return "", "", false, fmt.Errorf("docker config: auths[%q].auth is not user:password", k)
			}
			return u, p, true, nil
		}
		if a.Username != "" {
			return a.Username, a.Password, true, nil
		}
	}
	return "", "", false, nil
}
