package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// PluginType is the plugin's name, its binary's name in the CNI bin
// directory and the "type" of its entry in a conflist.
const PluginType = "meshredirect-cni"

// Installer puts the plugin into the node's CNI configuration: its binary
// into BinDir, its entry at the end of the primary CNI's conflist in
// ConfDir (chained after the primary, as istio-cni does).
type Installer struct {
	// ConfDir is the CNI configuration directory (/etc/cni/net.d).
	ConfDir string
	// BinDir is the CNI binary directory (/opt/cni/bin).
	BinDir string
	// Binary is the plugin's executable to copy into BinDir.
	Binary string
	// Entry is the plugin's entry; its "type" is set to PluginType.
	Entry map[string]any
	// Kubeconfig, if set, is the plugin's kubeconfig (WriteKubeconfig
	// writes it): the entry names it, and Uninstall removes it.
	Kubeconfig string
}

// ErrNoPrimary is returned while the directory holds no CNI configuration
// yet: the primary CNI has not been installed on the node.
var ErrNoPrimary = errors.New("no primary CNI configuration")

// Primary returns the file the kubelet's CNI uses: the first .conflist,
// .conf or .json file of dir in lexical order (libcni's rule).
func Primary(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("read CNI configuration directory %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".conflist", ".conf", ".json":
			if !e.IsDir() {
				names = append(names, e.Name())
			}
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%w in %s", ErrNoPrimary, dir)
	}
	sort.Strings(names)
	return filepath.Join(dir, names[0]), nil
}

// Install copies the binary and adds (or updates) the plugin's entry in the
// primary configuration. A single-plugin .conf is turned into a .conflist
// of the same name (the .conf goes). It returns the file it wrote. Running
// it again changes nothing.
func (in Installer) Install() (string, error) {
	if in.Binary != "" {
		if err := copyFile(in.Binary, filepath.Join(in.BinDir, PluginType), 0o755); err != nil {
			return "", fmt.Errorf("install %s into %s: %w", PluginType, in.BinDir, err)
		}
	}
	path, err := Primary(in.ConfDir)
	if err != nil {
		return "", err
	}
	list, err := readConflist(path)
	if err != nil {
		return "", err
	}
	entry := map[string]any{}
	for k, v := range in.Entry {
		entry[k] = v
	}
	entry["type"] = PluginType
	if in.Kubeconfig != "" {
		entry["kubeconfig"] = in.Kubeconfig
	}
	plugins := withoutUs(list.plugins)
	plugins = append(plugins, entry)
	out := path
	if filepath.Ext(path) != ".conflist" {
		out = strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
		// Another file of that name is not the kubelet's (the .conf sorts
		// first) but may be someone's: never overwrite it.
		if _, err := os.Lstat(out); err == nil {
			return "", fmt.Errorf("turn %s into a list: %s exists already; remove or rename it", path, out)
		}
	}
	if err := writeConflist(out, list, plugins); err != nil {
		return "", err
	}
	if out != path {
		if err := os.Remove(path); err != nil {
			return "", fmt.Errorf("remove %s, now %s: %w", path, out, err)
		}
	}
	return out, nil
}

// Installed reports whether the primary configuration has the plugin's
// entry (a primary CNI that rewrites its file drops it).
func (in Installer) Installed() (bool, error) {
	path, err := Primary(in.ConfDir)
	if err != nil {
		return false, err
	}
	list, err := readConflist(path)
	if err != nil {
		return false, err
	}
	return len(withoutUs(list.plugins)) != len(list.plugins), nil
}

// Uninstall removes the plugin's entry from every configuration of ConfDir,
// its binary from BinDir, and its kubeconfig: Kubeconfig, the one each entry
// names, and ConfDir/KubeconfigName. Missing pieces are not an error.
func (in Installer) Uninstall() error {
	var errs []error
	var kubeconfigs []string
	if in.ConfDir != "" {
		kubeconfigs = append(kubeconfigs, filepath.Join(in.ConfDir, KubeconfigName))
	}
	if in.Kubeconfig != "" {
		kubeconfigs = append(kubeconfigs, in.Kubeconfig)
	}
	entries, err := os.ReadDir(in.ConfDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		path := filepath.Join(in.ConfDir, e.Name())
		if filepath.Ext(path) != ".conflist" {
			continue
		}
		list, err := readConflist(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		kept := withoutUs(list.plugins)
		if len(kept) == len(list.plugins) {
			continue
		}
		for _, p := range list.plugins {
			if k, ok := p["kubeconfig"].(string); ok && p["type"] == PluginType && k != "" {
				kubeconfigs = append(kubeconfigs, k)
			}
		}
		if err := writeConflist(path, list, kept); err != nil {
			errs = append(errs, err)
		}
	}
	if in.BinDir != "" {
		if err := os.Remove(filepath.Join(in.BinDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// Last: while an entry names a kubeconfig, the file is there.
	for _, k := range kubeconfigs {
		if err := os.Remove(k); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// conflist is a CNI configuration list, or a single configuration read as
// a list of one. Fields other than "plugins" are kept as they were.
type conflist struct {
	fields  map[string]json.RawMessage
	plugins []map[string]any
	mode    os.FileMode
}

func readConflist(path string) (conflist, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return conflist{}, fmt.Errorf("read CNI configuration %s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return conflist{}, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return conflist{}, fmt.Errorf("parse CNI configuration %s: %w", path, err)
	}
	l := conflist{fields: fields, mode: st.Mode().Perm()}
	if p, ok := fields["plugins"]; ok {
		if err := unmarshalNumbers(p, &l.plugins); err != nil {
			return conflist{}, fmt.Errorf("parse the plugins of %s: %w", path, err)
		}
		delete(l.fields, "plugins")
		return l, nil
	}
	// A single plugin (.conf): the list keeps its name and version.
	var single map[string]any
	if err := unmarshalNumbers(raw, &single); err != nil {
		return conflist{}, err
	}
	if _, ok := single["type"]; !ok {
		return conflist{}, fmt.Errorf("CNI configuration %s has neither plugins nor a type", path)
	}
	l.fields = map[string]json.RawMessage{}
	for _, k := range []string{"cniVersion", "name"} {
		if v, ok := fields[k]; ok {
			l.fields[k] = v
		}
	}
	l.plugins = []map[string]any{single}
	return l, nil
}

func writeConflist(path string, l conflist, plugins []map[string]any) error {
	out := map[string]any{}
	for k, v := range l.fields {
		out[k] = v
	}
	out["plugins"] = plugins
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	mode := l.mode
	if mode == 0 {
		mode = 0o644
	}
	return writeFileAtomic(path, append(b, '\n'), mode)
}

func withoutUs(plugins []map[string]any) []map[string]any {
	out := make([]map[string]any, 0, len(plugins))
	for _, p := range plugins {
		if p["type"] != PluginType {
			out = append(out, p)
		}
	}
	return out
}

// writeFileAtomic writes through a temporary file renamed over path, so
// that the kubelet never reads half a configuration. The temporary file's
// name does not end in .conf/.conflist, so the kubelet ignores it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".meshredirect-*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, in); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(dst, buf.Bytes(), mode)
}

// unmarshalNumbers is json.Unmarshal keeping numbers as json.Number: other
// plugins' numbers are written back as they were, where a float64 would turn
// an integer beyond 2^53 into another one. raw was parsed whole already, so
// there is no trailing data to refuse.
func unmarshalNumbers(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	return d.Decode(v)
}
