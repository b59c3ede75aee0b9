package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgemq/edgemq/edge"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

// TestShippedConfigsLoad loads every edgemq config shipped in deploy/ and
// examples/ (YAML files whose name starts with "edgemq") with the real
// loader, as `edgemq run -c` would, and parses the config snippets of the
// install guides.
func TestShippedConfigsLoad(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", t.TempDir()) // the unit's LoadCredential= directory
	var found []string
	for _, dir := range []string{"deploy", "examples"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(p string, d fs.DirEntry, err error) error {
			if os.IsNotExist(err) && p == filepath.Join(repoRoot, dir) {
				return filepath.SkipDir // examples/ may not exist yet
			}
			if err != nil {
				return err
			}
			name := d.Name()
			if !d.IsDir() && strings.HasPrefix(name, "edgemq") && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"deploy/edgemq.example.yaml", "deploy/edgemq.container.yaml"} {
		if !slices.Contains(found, filepath.Join(repoRoot, want)) {
			t.Errorf("%s not found among %v", want, found)
		}
	}
	for _, path := range found {
		if _, err := edge.LoadConfig(path); err != nil {
			t.Errorf("%v", err)
		}
	}
	// The configs the install guides show, block by block (a block for
	// another program names it: scrape_configs is Prometheus's).
	t.Setenv("BRIDGE_PASSWORD", "x")
	for _, doc := range []string{"deploy/raspberry-pi.md", "docs/deployment.md"} {
		data, err := os.ReadFile(filepath.Join(repoRoot, doc))
		if err != nil {
			t.Fatal(err)
		}
		blocks := strings.Split(string(data), "```yaml\n")[1:]
		if len(blocks) == 0 {
			t.Errorf("%s: no yaml block", doc)
		}
		for i, b := range blocks {
			b, _, _ = strings.Cut(b, "```")
			if strings.Contains(b, "scrape_configs:") {
				continue
			}
			if _, err := edge.ParseConfig([]byte(b)); err != nil {
				t.Errorf("%s, yaml block %d: %v\n%s", doc, i+1, err, b)
			}
		}
	}
}

// metricName matches the metric names a PromQL expression uses: ours and
// the Go runtime's and the process's, which the broker registers too.
var metricName = regexp.MustCompile(`\b(?:edgemq|go|process)_[a-z0-9_]+\b`)

// TestDashboardAndAlertMetricsExist checks that every metric the Grafana
// dashboard and the alerting rules name is one the broker exports: it runs
// the broker in-process, drives QoS 0, 1
// and 2 traffic through it, and scrapes /metrics. A labelled metric whose
// event has not happened here (a refused publish) has no sample yet; it
// must then at least be registered under that name.
func TestDashboardAndAlertMetricsExist(t *testing.T) {
	needMosquittoClients(t)
	used := map[string][]string{} // metric -> files naming it
	dashboard, err := os.ReadFile(filepath.Join(repoRoot, "deploy/grafana/edgemq.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboard, &dash); err != nil {
		t.Fatalf("edgemq.json: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	for _, e := range exprs {
		for _, m := range metricName.FindAllString(e, -1) {
			used[m] = append(used[m], "edgemq.json")
		}
	}
	alerts, err := os.ReadFile(filepath.Join(repoRoot, "deploy/prometheus/alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(alerts), "\n") {
		if expr, ok := strings.CutPrefix(strings.TrimSpace(line), "expr:"); ok {
			for _, m := range metricName.FindAllString(expr, -1) {
				used[m] = append(used[m], "alerts.yml")
			}
		}
	}
	if len(used) < 20 {
		t.Fatalf("only %d metric names found in the dashboard and the alerts: %v", len(used), used)
	}

	reg := prometheus.NewRegistry()
	// A bridge to an upstream that is not there: its state and backlog
	// metrics have samples then.
	cfg, err := edge.ParseConfig([]byte(fmt.Sprintf(`
listeners: [{type: tcp, address: "127.0.0.1:0"}]
http: {address: "127.0.0.1:0"}
auth: {allow_anonymous: true}
storage: {dir: %q}
shutdown: {grace: 0s}
bridges:
  - name: central
    upstreams: ["mqtt://127.0.0.1:%d"]
    forward: [{filter: "deploy/#"}]
`, t.TempDir(), freePort(t))))
	if err != nil {
		t.Fatal(err)
	}
	b, err := edge.New(cfg, edge.Options{Registry: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	_, port, err := net.SplitHostPort(b.Addr(cfg.Listeners[0].Name).String())
	if err != nil {
		t.Fatal(err)
	}
	mqtt := []string{"-h", "127.0.0.1", "-p", port}
	for _, qos := range []string{"0", "1", "2"} {
		sub := subscribe(t, append(mqtt, "-q", qos, "-t", "deploy/"+qos, "-C", "1", "-W", "30")...)
		publish(t, append(mqtt, "-q", qos, "-t", "deploy/"+qos, "-m", "m")...)
		sub.wait(t)
	}

	scraped := map[string]bool{}
	for _, line := range strings.Split(httpGet(t, "http://"+b.HTTPAddr().String()+"/metrics"), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		scraped[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}
	registered := map[string]bool{}
	descs := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(descs)
		close(descs)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range descs {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			registered[m[1]] = true
		}
	}
	for m, where := range used {
		if scraped[m] {
			continue
		}
		base := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, suffix)
		}
		if registered[base] {
			t.Logf("%s: registered, no sample yet (its event did not happen here)", m)
			continue
		}
		slices.Sort(where)
		t.Errorf("%s (named in %s) is not exported by the broker", m, strings.Join(slices.Compact(where), ", "))
	}
}

// TestDockerfile checks what can be checked of deploy/Dockerfile without a
// Docker engine: the final stage is distroless (or scratch) and runs no
// command at build time, its user is not root, its log directory is a
// volume, it takes the binary from make dist's directory by the names the
// Makefile gives, and its HEALTHCHECK is an exec-form `edgemq health` on the
// binary it installs (no shell to run anything else).
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	makefile, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string // instructions of each stage, continuation lines joined
	var cur string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if cur == "" && (line == "" || line[0] == '#') {
			continue
		}
		cur += line
		if strings.HasSuffix(cur, "\\") {
			cur = strings.TrimSuffix(cur, "\\") + " "
			continue
		}
		if strings.HasPrefix(cur, "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("instruction before FROM: %q", cur)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], cur)
		cur = ""
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}
	final := stages[len(stages)-1]
	if !strings.HasPrefix(final[0], "FROM gcr.io/distroless/static") && final[0] != "FROM scratch" {
		t.Errorf("final stage %q: want distroless static or scratch", final[0])
	}
	has := func(prefix string) string {
		for _, in := range final {
			if strings.HasPrefix(in, prefix) {
				return in
			}
		}
		return ""
	}
	if in := has("RUN "); in != "" {
		t.Errorf("the final stage has no shell to run %q", in)
	}
	if u := has("USER "); u == "" || strings.HasPrefix(u, "USER root") || strings.HasPrefix(u, "USER 0") {
		t.Errorf("final stage user %q: want a non-root user", u)
	}
	if has("VOLUME /var/lib/edgemq") == "" {
		t.Error("no VOLUME for the log's directory /var/lib/edgemq")
	}
	bin := ""
	for _, in := range final {
		if f := strings.Fields(in); f[0] == "COPY" && path.Base(f[len(f)-2]) == "edgemq" && path.Base(f[len(f)-1]) == "edgemq" {
			bin = f[len(f)-1]
		}
	}
	hc := has("HEALTHCHECK ")
	i := strings.Index(hc, " CMD ")
	if i < 0 {
		t.Fatalf("HEALTHCHECK %q has no CMD", hc)
	}
	var argv []string
	if err := json.Unmarshal([]byte(hc[i+len(" CMD "):]), &argv); err != nil {
		t.Fatalf("HEALTHCHECK CMD is not in exec form (a JSON array; the image has no shell): %q", hc)
	}
	if bin == "" || len(argv) < 2 || argv[0] != bin || argv[1] != "health" {
		t.Errorf("HEALTHCHECK runs %q, want %s health ...", argv, bin)
	}
	pick := strings.Join(stages[0], "\n")
	if !strings.Contains(pick, "COPY dist/") || !strings.Contains(pick, `edgemq-*-linux-"${TARGETARCH}${TARGETVARIANT}"`) || !strings.Contains(pick, "SHA256SUMS") {
		t.Errorf("the first stage does not pick dist/edgemq-*-linux-ARCH checked against SHA256SUMS:\n%s", pick)
	}
	// The build context is what .dockerignore lets through: every COPY source.
	ignore, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range append(stages[0], final...) {
		if f := strings.Fields(in); f[0] == "COPY" && !strings.HasPrefix(f[1], "--from=") && !strings.HasPrefix(f[1], "--chown=") {
			if src := f[1]; !slices.Contains(strings.Split(string(ignore), "\n"), "!"+src) {
				t.Errorf(".dockerignore does not let %s into the build context", src)
			}
		}
	}
	for _, platform := range []string{"amd64", "arm64", "armv7"} { // docker's TARGETARCH+TARGETVARIANT
		if !strings.Contains(string(makefile), "$(DIST)/edgemq-$(VERSION)-linux-"+platform+" ") {
			t.Errorf("make dist does not build edgemq-VERSION-linux-%s, which the image takes", platform)
		}
	}
}

// TestMemoryLimit: memory_limit in the config is the Go runtime's soft limit
// in the running broker, as /metrics shows it (go_gc_gomemlimit_bytes, the
// dashboard's Memory panel), and it takes the place of a GOMEMLIMIT
// environment variable (the systemd unit sets one).
func TestMemoryLimit(t *testing.T) {
	bin := buildBinary(t)
	cfg, httpAddr := brokerConfig(t)
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, append(data, "memory_limit: 100MiB\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOMEMLIMIT", "300MiB") // inherited by the broker
	d := startDaemon(t, bin, "run", "-c", cfg)
	waitFor(t, d.stderr, d.done, "address="+httpAddr)
	metrics := httpGet(t, "http://"+httpAddr+"/metrics")
	if want := "\ngo_gc_gomemlimit_bytes 1.048576e+08\n"; !strings.Contains(metrics, want) {
		i := strings.Index(metrics, "\ngo_gc_gomemlimit_bytes")
		t.Errorf("want %q in /metrics, got %.60q", want, metrics[max(i, 0):])
	}
	if code := d.stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}
