package cni

import (
	"bytes"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzNames are the names FuzzConflist gives its files: a primary CNI's
// conflist, a .conf or .json, and their neighbours.
var fuzzNames = []string{"10-a.conflist", "10-a.conf", "10-a.json", "05-b.conflist", "20-c.conf", "99-z.conflist"}

// fuzzEntry is the entry the chart's agent installs.
var fuzzEntry = map[string]any{"socket": "/var/run/meshredirect/cni.sock", "excludeNamespaces": []any{"kube-system", "istio-system"}}

// FuzzConflist runs readConflist, Install, Installed and Uninstall on one
// or two random files in a CNI configuration directory. Nothing may panic.
// When Install fails, no file changes. When it succeeds: the file it wrote
// is valid JSON with the primary's plugins, minus any entry of ours, then
// ours, and the primary's other fields as they were (a .conf keeps its
// name and version, and its plugin comes first in the .conflist that
// replaces it); its mode is the primary's; no other file changed; Installed
// says so; a second Install changes nothing; and Uninstall gives back the
// primary's plugin list.
//
// Plugins are compared as JSON values, numbers by their exact value: a
// rewrite may re-indent, but must not change what a CNI plugin reads.
func FuzzConflist(f *testing.F) {
	for _, name := range []string{"10-ptp.conflist", "10-calico.conflist", "05-cilium.conflist", "10-bridge.conf"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(0), []byte(nil), uint8(0))
		f.Add(b, uint8(1), b, uint8(0))
	}
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp"},{"type":"meshredirect-cni","socket":"/old"}]}`), uint8(0), []byte(`{"type":"bridge"}`), uint8(4))
	f.Add([]byte(`{"type":"bridge","mtu":1500,"rate":1e3}`), uint8(2), []byte(`{"plugins":[]}`), uint8(3))
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"x","plugins":null}`), uint8(0), []byte(`not json`), uint8(5))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"bw","plugins":[{"type":"ptp","mtu":1500},{"type":"bandwidth","ingressRate":1000000000000,"ingressBurst":4294967295,"egressRate":0.5}]}`), uint8(6), []byte(nil), uint8(0))

	f.Fuzz(func(t *testing.T, content1 []byte, name1 uint8, content2 []byte, name2 uint8) {
		dir := t.TempDir()
		write := func(content []byte, sel uint8) {
			mode := os.FileMode(0o600)
			if int(sel)/len(fuzzNames)%2 == 1 {
				mode = 0o644
			}
			if err := os.WriteFile(filepath.Join(dir, fuzzNames[int(sel)%len(fuzzNames)]), content, mode); err != nil {
				t.Fatal(err)
			}
		}
		write(content1, name1)
		if len(content2) > 0 {
			write(content2, name2)
		}
		for _, n := range fuzzNames {
			readConflist(filepath.Join(dir, n)) // must not panic
		}
		before := readDir(t, dir)
		primary, err := Primary(dir)
		if err != nil {
			t.Fatal(err)
		}
		primaryStat, err := os.Stat(primary)
		if err != nil {
			t.Fatal(err)
		}

		in := Installer{ConfDir: dir, Entry: fuzzEntry}
		out, err := in.Install()
		if err != nil {
			if after := readDir(t, dir); !sameFiles(before, after) {
				t.Fatalf("Install failed (%v) but changed the directory:\n%q\n%q", err, before, after)
			}
			return
		}

		orig, origFields, isList := pluginsOf(t, before[filepath.Base(primary)])
		var kept []any
		for _, p := range orig {
			if m, ok := p.(map[string]any); !ok || m["type"] != PluginType {
				kept = append(kept, p)
			}
		}
		wantOut := primary
		if filepath.Ext(primary) != ".conflist" {
			wantOut = strings.TrimSuffix(primary, filepath.Ext(primary)) + ".conflist"
		}
		if out != wantOut {
			t.Fatalf("Install wrote %s, want %s", out, wantOut)
		}
		after := readDir(t, dir)
		written := after[filepath.Base(out)]
		if !json.Valid(written) {
			t.Fatalf("Install wrote invalid JSON:\n%s", written)
		}
		got, gotFields, _ := pluginsOf(t, written)
		if len(got) != len(kept)+1 || !sameJSON(got[:len(kept)], kept) {
			t.Fatalf("the primary's plugins changed:\nbefore %s\nafter  %s", before[filepath.Base(primary)], written)
		}
		wantEntry := map[string]any{"type": PluginType}
		for k, v := range fuzzEntry {
			wantEntry[k] = v
		}
		if !sameJSON(got[len(kept)], jsonValue(t, wantEntry)) {
			t.Errorf("our entry is %v", got[len(kept)])
		}
		wantFields := origFields
		if !isList {
			// A single plugin: it is the first of the list, which keeps
			// its name and version.
			wantFields = map[string]any{}
			for _, k := range []string{"cniVersion", "name"} {
				if v, ok := origFields[k]; ok {
					wantFields[k] = v
				}
			}
		}
		if _, ok := after[filepath.Base(primary)]; ok && out != primary {
			t.Errorf("%s is still there beside %s", primary, out)
		}
		if !sameJSON(gotFields, wantFields) {
			t.Errorf("the list's fields changed:\nbefore %s\nafter  %s", before[filepath.Base(primary)], written)
		}
		if st, err := os.Stat(out); err != nil || st.Mode().Perm() != primaryStat.Mode().Perm() {
			t.Errorf("mode of %s: %v (%v), want the primary's %v", out, st.Mode().Perm(), err, primaryStat.Mode().Perm())
		}
		for name, b := range before {
			if name != filepath.Base(primary) && name != filepath.Base(out) && !bytes.Equal(after[name], b) {
				t.Errorf("%s changed", name)
			}
		}
		if ok, err := in.Installed(); !ok || err != nil {
			t.Errorf("Installed() = %v, %v after Install", ok, err)
		}

		if out2, err := in.Install(); err != nil || out2 != out {
			t.Fatalf("a second Install: %s, %v", out2, err)
		}
		if again := readDir(t, dir); !sameFiles(after, again) {
			t.Errorf("a second Install changed the directory")
		}

		// Uninstall reports the other conflists it cannot read; what it
		// does to ours is what matters here.
		uerr := in.Uninstall()
		undone := readDir(t, dir)[filepath.Base(out)]
		if !json.Valid(undone) {
			t.Fatalf("Uninstall wrote invalid JSON (%v):\n%s", uerr, undone)
		}
		back, backFields, _ := pluginsOf(t, undone)
		if !sameJSON(back, kept) || !sameJSON(backFields, wantFields) {
			t.Errorf("Uninstall did not give the plugin list back (%v):\nbefore    %s\nuninstall %s", uerr, before[filepath.Base(primary)], undone)
		}
		if ok, _ := in.Installed(); ok {
			t.Errorf("Installed() after Uninstall")
		}
	})
}

// readDir returns the files of dir by name.
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func sameFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

// pluginsOf reads a configuration the way a CNI runtime does, as the fuzz
// target's own oracle: its plugin list (a single plugin is a list of one)
// and its other fields, numbers kept exact, and whether it is a list.
func pluginsOf(t *testing.T, raw []byte) ([]any, map[string]any, bool) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v map[string]any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	p, ok := v["plugins"]
	if !ok {
		return []any{v}, v, false
	}
	delete(v, "plugins")
	list, _ := p.([]any)
	return list, v, true
}

func jsonValue(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var out any
	if err := d.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// sameJSON compares decoded JSON values, numbers by exact value (1e3 is
// 1000; 9007199254740993 is not 9007199254740992). A nil list is an empty
// one.
func sameJSON(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		rx, okx := new(big.Rat).SetString(string(x))
		ry, oky := new(big.Rat).SetString(string(y))
		return okx && oky && rx.Cmp(ry) == 0
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !sameJSON(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok && b != nil {
			return false
		}
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	case nil:
		if y, ok := b.([]any); ok {
			return len(y) == 0
		}
		return b == nil
	default:
		return a == b
	}
}

// TestConflistKeepsLargeIntegers: what FuzzConflist found. readConflist
// decodes the plugins into map[string]any, so every number becomes a
// float64, and an integer beyond 2^53 is written back as another one
// (9007199254740993 as 9007199254740992) by Install and by Uninstall: in
// every plugin of the primary CNI's list, not only ours. Decoding with
// json.Decoder.UseNumber keeps numbers as they were written.
func TestConflistKeepsLargeIntegers(t *testing.T) {
	dir := t.TempDir()
	const conf = `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bandwidth","ingressRate":9007199254740993}]}`
	if err := os.WriteFile(filepath.Join(dir, "10-a.conflist"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	path, err := Installer{ConfDir: dir, Entry: fuzzEntry}.Install()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if !bytes.Contains(b, []byte("9007199254740993")) {
		t.Errorf("ingressRate rewritten:\n%s", b)
	}
}
