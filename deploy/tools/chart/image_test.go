package chart

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattn/go-shellwords"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// repoRoot is the root of the repository (the root module and the build context).
const repoRoot = "../../.."

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Cmd   string   // upper case: FROM, RUN, COPY, ...
	Flags []string // --from=build, --mount=..., --platform=...
	Args  string   // the rest, as written
	Stage string   // the stage's name (FROM ... AS name), or its index
	Line  int
}

// exec returns a JSON-form argument list (ENTRYPOINT ["/x"]), or nil for shell form.
func (in instruction) exec() []string {
	var v []string
	if json.Unmarshal([]byte(in.Args), &v) != nil {
		return nil
	}
	return v
}

// parseDockerfile reads the instructions of a Dockerfile: comments and parser directives
// skipped, lines ending in a backslash joined, flags (--x=y) split from the arguments. It
// knows what this project's Dockerfile uses, no heredocs.
func parseDockerfile(r io.Reader) ([]instruction, error) {
	var (
		out   []instruction
		buf   strings.Builder
		start int
		stage string
		froms int
	)
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if buf.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasPrefix(line, "#") { // a comment inside a continued instruction
			continue
		}
		if buf.Len() == 0 {
			start = n
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			buf.WriteString(cont + " ")
			continue
		}
		buf.WriteString(line)
		cmd, rest, _ := strings.Cut(strings.TrimSpace(buf.String()), " ")
		buf.Reset()
		in := instruction{Cmd: strings.ToUpper(cmd), Line: start}
		rest = strings.TrimSpace(rest)
		for strings.HasPrefix(rest, "--") {
			var flag string
			flag, rest, _ = strings.Cut(rest, " ")
			in.Flags = append(in.Flags, flag)
			rest = strings.TrimSpace(rest)
		}
		in.Args = rest
		if in.Cmd == "FROM" {
			f := strings.Fields(rest)
			stage = "#" + strconv.Itoa(froms)
			froms++
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stage = f[2]
			}
		}
		in.Stage = stage
		out = append(out, in)
	}
	if buf.Len() > 0 {
		return nil, errors.New("Dockerfile ends inside a continued line")
	}
	return out, sc.Err()
}

// dockerfile is the parsed Dockerfile, with the build-time ARG defaults.
type dockerfile struct {
	ins  []instruction
	args map[string]string
}

func readDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ins, err := parseDockerfile(f)
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerfile{ins: ins, args: map[string]string{}}
	for _, in := range ins {
		if in.Cmd == "ARG" {
			k, v, _ := strings.Cut(in.Args, "=")
			d.args[k] = v
		}
	}
	return d
}

// expand substitutes ${NAME} and $NAME with the ARG defaults.
func (d *dockerfile) expand(s string) string {
	return os.Expand(s, func(k string) string { return d.args[k] })
}

// stageOf returns the instructions of the named stage.
func (d *dockerfile) stage(name string) []instruction {
	var out []instruction
	for _, in := range d.ins {
		if in.Stage == name {
			out = append(out, in)
		}
	}
	return out
}

// buildCommand is the go build of the Dockerfile: its environment and arguments.
type buildCommand struct {
	env    []string // CGO_ENABLED=0 ...
	args   []string // build -trimpath ...
	output string   // -o: a directory (ending in /) when several packages are built
	pkgs   []string // ./cmd/...
}

// outputs returns the files the build writes: -o itself, or -o/<last element of each package>.
func (b buildCommand) outputs() []string {
	if !strings.HasSuffix(b.output, "/") {
		return []string{b.output}
	}
	var out []string
	for _, p := range b.pkgs {
		out = append(out, b.output+filepath.Base(p))
	}
	return out
}

// goBuild finds the RUN of the build stage that runs go build and splits it into words,
// ARGs expanded (TARGETOS=linux, TARGETARCH=amd64: their defaults).
func (d *dockerfile) goBuild(t *testing.T) buildCommand {
	t.Helper()
	for _, in := range d.stage("build") {
		if in.Cmd != "RUN" || !strings.Contains(in.Args, "go build") {
			continue
		}
		words, err := shellwords.Parse(d.expand(in.Args))
		if err != nil {
			t.Fatalf("Dockerfile:%d: %v", in.Line, err)
		}
		var b buildCommand
		i := 0
		for ; i < len(words) && strings.Contains(words[i], "="); i++ {
			b.env = append(b.env, words[i])
		}
		if i+1 >= len(words) || words[i] != "go" || words[i+1] != "build" {
			t.Fatalf("Dockerfile:%d: want `VAR=... go build ...` alone in the RUN, got %q", in.Line, words)
		}
		b.args = words[i+1:]
		for j := 1; j < len(b.args); j++ {
			switch w := b.args[j]; {
			case w == "-o" && j+1 < len(b.args):
				b.output = b.args[j+1]
				j++
			case strings.HasPrefix(w, "./"):
				b.pkgs = append(b.pkgs, w)
			}
		}
		return b
	}
	t.Fatal("Dockerfile: no RUN go build in the stage named build")
	return buildCommand{}
}

func TestDockerfile(t *testing.T) {
	d := readDockerfile(t)
	b := d.goBuild(t)
	if !slices.Contains(b.env, "CGO_ENABLED=0") {
		t.Errorf("go build runs with %v: want CGO_ENABLED=0 (static binaries)", b.env)
	}
	if !slices.Contains(b.env, "GOOS=linux") || !slices.Contains(b.env, "GOARCH=amd64") {
		t.Errorf("go build runs with %v: want GOOS=linux GOARCH=amd64 by default", b.env)
	}
	if !slices.Contains(b.args, "-trimpath") {
		t.Errorf("go build %v: want -trimpath", b.args)
	}
	if want := []string{"./cmd/meshredirect", "./cmd/meshredirect-cni"}; !slices.Equal(b.pkgs, want) {
		t.Errorf("go build builds %v, want %v", b.pkgs, want)
	}

	// The final stage: distroless static, the binaries copied from the build's outputs,
	// ENTRYPOINT running the agent, as root, `agent` by default.
	last := d.ins[len(d.ins)-1].Stage
	final := d.stage(last)
	if from := final[0].Args; !strings.HasPrefix(from, "gcr.io/distroless/static-debian12") {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static-debian12", from)
	}
	copied := map[string]string{} // image path -> build output
	var entrypoint, user string
	var cmd []string
	for _, in := range final {
		switch in.Cmd {
		case "COPY":
			f := strings.Fields(in.Args)
			if !slices.Contains(in.Flags, "--from=build") || len(f) != 2 || !slices.Contains(b.outputs(), f[0]) {
				t.Errorf("Dockerfile:%d: COPY %s: want one of the build's outputs %v", in.Line, in.Args, b.outputs())
				continue
			}
			copied[f[1]] = f[0]
		case "ENTRYPOINT":
			if e := in.exec(); len(e) == 1 {
				entrypoint = e[0]
			} else {
				t.Errorf("Dockerfile:%d: ENTRYPOINT %s, want the JSON form with the binary alone", in.Line, in.Args)
			}
		case "CMD":
			cmd = in.exec()
		case "USER":
			user = in.Args
		case "RUN":
			t.Errorf("Dockerfile:%d: RUN in the final stage: distroless has no shell", in.Line)
		}
	}
	if src := copied[entrypoint]; filepath.Base(src) != "meshredirect" {
		t.Errorf("ENTRYPOINT runs %q, which is %q from the build: want the agent", entrypoint, src)
	}
	if !slices.Equal(cmd, []string{"agent"}) {
		t.Errorf("CMD %v, want [agent]", cmd)
	}
	if user != "0:0" && user != "root" {
		t.Errorf("USER %q, want root: the capabilities do not survive exec for another user", user)
	}
	// The CNI plugin is where the chart's cni.plugin (--cni-plugin) looks for it.
	ch, err := Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	plugin := ch.Values["cni"].(map[string]any)["plugin"].(string)
	if src := copied[plugin]; filepath.Base(src) != "meshredirect-cni" {
		t.Errorf("the chart's cni.plugin %s is %q in the image, want the CNI plugin", plugin, src)
	}

	// The Go of the build image is the one go.mod asks for.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	if got := d.args["GO_VERSION"]; got != string(m[1]) {
		t.Errorf("Dockerfile GO_VERSION %s, go.mod says go %s", got, m[1])
	}
	if from := d.stage("build")[0]; !strings.Contains(from.Args, "golang:${GO_VERSION}") {
		t.Errorf("build stage FROM %s, want golang:${GO_VERSION}", from.Args)
	}
	// Every base image is pinned by the digest of its image index: a tag alone can name
	// another image tomorrow.
	pinned := regexp.MustCompile(`^\S+@sha256:[0-9a-f]{64}$`)
	for _, in := range d.ins {
		if in.Cmd != "FROM" {
			continue
		}
		image := d.expand(strings.Fields(in.Args)[0])
		if !pinned.MatchString(image) {
			t.Errorf("Dockerfile:%d: FROM %s: want image@sha256:<digest>", in.Line, image)
		}
	}
}

func TestParseDockerfile(t *testing.T) {
	ins, err := parseDockerfile(strings.NewReader(`# syntax=docker/dockerfile:1
ARG V=1
FROM --platform=$BUILDPLATFORM golang:${V} AS build
# comment
RUN --mount=type=cache,target=/c \
    # a comment inside
    A=1 go build -o /out/x ./cmd/x
FROM scratch
COPY --from=build /out/x /x
ENTRYPOINT ["/x"]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, 0, len(ins))
	for _, in := range ins {
		got = append(got, in.Stage+" "+in.Cmd+" "+strings.Join(in.Flags, ",")+" "+in.Args)
	}
	want := []string{
		" ARG  V=1",
		"build FROM --platform=$BUILDPLATFORM golang:${V} AS build",
		"build RUN --mount=type=cache,target=/c A=1 go build -o /out/x ./cmd/x",
		"#1 FROM  scratch",
		"#1 COPY --from=build /out/x /x",
		`#1 ENTRYPOINT  ["/x"]`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("parsed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// buildImageBinaries builds the binaries as the Dockerfile does (its go build command, its
// environment) from a copy of the build context that .dockerignore leaves, once per test
// binary, and returns the directory they are in: a file the build needs but .dockerignore
// drops fails here.
func buildImageBinaries(t *testing.T) string {
	t.Helper()
	d := readDockerfile(t)
	b := d.goBuild(t)
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meshredirect-image-")
		if err != nil {
			binErr = err
			return
		}
		binCleanup = func() { os.RemoveAll(dir) }
		ctx := filepath.Join(dir, "context")
		n, err := copyContext(repoRoot, ctx)
		if err != nil {
			binErr = err
			return
		}
		binDir = filepath.Join(dir, "out")
		args := slices.Clone(b.args)
		for i, a := range args {
			if a == "-o" {
				args[i+1] = binDir + "/"
			}
		}
		begin := time.Now()
		cmd := exec.Command("go", args...)
		cmd.Dir = ctx
		// The module cache stands in for the Dockerfile's `go mod download`.
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = errors.New("go " + strings.Join(args, " ") + ": " + err.Error() + "\n" + string(out))
			return
		}
		t.Logf("built %v from a build context of %d files in %v", b.pkgs, n, time.Since(begin).Round(time.Millisecond))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// agentBinary is the agent as the image has it.
func agentBinary(t *testing.T) string {
	return filepath.Join(buildImageBinaries(t), "meshredirect")
}

var binCleanup = func() {}

// copyContext copies the files of root that .dockerignore keeps into dst, and returns how many.
func copyContext(root, dst string) (int, error) {
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		return 0, err
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		return 0, err
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return 0, err
	}
	n := 0
	err = filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." || e.IsDir() {
			return nil
		}
		if skip, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel)); err != nil || skip {
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		n++
		return os.WriteFile(out, b, 0o644)
	})
	return n, err
}

func TestDockerignore(t *testing.T) {
	dst := t.TempDir()
	if _, err := copyContext(repoRoot, dst); err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{"go.mod", "go.sum", "cmd/meshredirect/main.go", "asm/doc.go"} {
		if _, err := os.Stat(filepath.Join(dst, keep)); err != nil {
			t.Errorf("%s not in the build context: %v", keep, err)
		}
	}
	for _, leave := range []string{".git", "bin", "meshredirect", "deploy", "README.md", "asm/testdata"} {
		if _, err := os.Stat(filepath.Join(dst, leave)); err == nil {
			t.Errorf("%s is in the build context", leave)
		}
	}
}

// TestStaticBinaries checks that the Dockerfile's build gives binaries that run on distroless
// static, and, for the CNI plugin, on any node: no program interpreter, no shared library.
func TestStaticBinaries(t *testing.T) {
	dir := buildImageBinaries(t)
	for _, name := range []string{"meshredirect", "meshredirect-cni"} {
		t.Run(name, func(t *testing.T) {
			bin := filepath.Join(dir, name)
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
				t.Errorf("binary for %v %v, want x86-64", f.Machine, f.Class)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("program header %v: the binary is dynamically linked", p.Type)
				}
			}
			if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
				t.Errorf("binary needs shared libraries %v", libs)
			}
			// -trimpath: no path of this machine in the binary.
			raw, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte(dir)) {
				t.Errorf("binary contains the build directory %s: -trimpath did not apply", dir)
			}
			// ldd agrees where it exists (glibc's says "not a dynamic executable").
			if ldd, err := exec.LookPath("ldd"); err == nil {
				out, _ := exec.Command(ldd, bin).CombinedOutput()
				if !strings.Contains(string(out), "not a dynamic executable") && !strings.Contains(string(out), "statically linked") {
					t.Errorf("ldd %s: %s", bin, out)
				}
			}
		})
	}
	// The image's ENTRYPOINT and CMD: `/meshredirect agent`; --help shows that it starts
	// without a libc and knows the command.
	if out := run(t, agentBinary(t), "agent", "--help"); !strings.Contains(out, "--node-name") {
		t.Errorf("agent --help:\n%s", out)
	}
}

// run runs bin with args and returns its output, failing t if it fails.
func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}
