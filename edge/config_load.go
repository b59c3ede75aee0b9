package edge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// How a file becomes a Config:
//
//  1. The YAML is parsed into a node tree (one document; at most MaxConfigSize bytes).
//  2. A walk of the tree alongside the Config type rejects unknown keys, duplicate keys,
//     keys without a value and values of the wrong type, each with its line and key path
//     ("line 7: storage.sycn: unknown field; valid: dir, sync, ..."). The walk also expands
//     ${VAR} in scalar values, so the expansion can neither add keys nor break quoting.
//  3. The tree is decoded onto DefaultConfig(): a key the file leaves out keeps its default.
//     A mapping replaces fields one by one; a list (listeners, acl, allowed_origins) replaces
//     the whole default list. A listener in a file gets the per-listener defaults (name, path).
//  4. Validate checks every value; its errors get the line of the key they are about.
//
// yaml's own Decoder.KnownFields cannot be used on a node tree (Node.Decode has no
// option for it), which is why step 2 does the strict check itself, with key paths.

// MaxConfigSize is the largest config file accepted, in bytes.
const MaxConfigSize = 1 << 20

// maxConfigNodes bounds the walk: aliases and merge keys can make a small file
// describe a huge tree ("billion laughs").
const maxConfigNodes = 100_000

// ErrConfig is matched (errors.Is) by every *ConfigError.
var ErrConfig = errors.New("edge: invalid config")

// ConfigError is one problem with a configuration: the key path of the field,
// the line in the file when known, and the reason. ParseConfig, LoadConfig and
// Validate return one ConfigError or several joined with errors.Join.
type ConfigError struct {
	// File is the config file, when the config came from one.
	File string
	// Line is the 1-based line in the file, 0 when unknown.
	Line int
	// Path is the field's key path, such as "listeners[1].address"; empty for
	// problems with the document as a whole.
	Path string
	// Reason says what is wrong and what was found: "must be host:port (got \"foo\")".
	Reason string
}

// Error formats the problem as "file:line: path: reason", leaving out what is unknown.
func (e *ConfigError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Is reports whether target is ErrConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

// ParseConfig parses a YAML document onto DefaultConfig, strictly: unknown
// keys are errors with their line number, and ${VAR} expands from the
// environment in values ($$ is a literal $; an unset variable is an error).
// An empty document gives DefaultConfig. The result is validated; all the
// problems found are returned, joined (see ConfigError).
func ParseConfig(data []byte) (Config, error) {
	return parseConfig(data, "", os.LookupEnv)
}

// LoadConfig reads and parses the file at path (see ParseConfig). Its errors
// name the file.
func LoadConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return parseConfig(data, path, os.LookupEnv)
}

// parseConfig is ParseConfig with the file name for errors and the environment as a function.
func parseConfig(data []byte, file string, lookup func(string) (string, bool)) (Config, error) {
	cfg, _, errs := readConfig(data, file, lookup)
	if len(errs) > 0 {
		joined := make([]error, len(errs))
		for i, e := range errs {
			joined[i] = e
		}
		return Config{}, errors.Join(joined...)
	}
	return cfg, nil
}

// readConfig parses data onto DefaultConfig and returns every problem of
// every stage, each naming file: the walk's (unknown keys, wrong types),
// then Validate's on what is left once the walk has cut the bad parts out
// of the tree, so one pass reports both. A Validate problem inside a path
// the walk already reported is left out: it would only repeat it. cfg is
// the configuration as far as it could be read; lineOf gives the line of a
// key path (0: unknown), for problems found later (edgemq check).
func readConfig(data []byte, file string, lookup func(string) (string, bool)) (cfg Config, lineOf func(string) int, errs []*ConfigError) {
	cfg = DefaultConfig()
	lineOf = func(string) int { return 0 }
	done := func(errs []*ConfigError) (Config, func(string) int, []*ConfigError) {
		for _, e := range errs {
			e.File = file
		}
		return cfg, lineOf, errs
	}
	if len(data) > MaxConfigSize {
		return done([]*ConfigError{{Reason: fmt.Sprintf("larger than %d bytes", MaxConfigSize)}})
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return done([]*ConfigError{yamlError(err)})
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		line := extra.Line
		if len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		return done([]*ConfigError{{Line: line, Reason: "more than one YAML document"}})
	} else if !errors.Is(err, io.EOF) {
		return done([]*ConfigError{yamlError(err)})
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			root = nil
		} else {
			root = root.Content[0]
		}
	}
	if root == nil || root.Kind == 0 || (root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null") {
		// Empty file, or only comments: the defaults.
		return done(configErrors(cfg.Validate()))
	}
	w := walker{lookup: lookup, lines: map[string]int{}, expanded: map[*yaml.Node]bool{}, bad: map[*yaml.Node]bool{}}
	w.walk(root, reflect.TypeOf(cfg), "")
	lineOf = w.lineOf
	errs = w.errs
	if w.bad[root] || w.nodes > maxConfigNodes {
		return done(errs)
	}
	w.prune(root, map[*yaml.Node]bool{})
	if err := root.Decode(&cfg); err != nil {
		// The walk should have caught everything; keep yaml's words if it did not.
		return done(append(errs, yamlError(err)))
	}
	cfg.applyDefaults()
	for _, e := range configErrors(cfg.Validate()) {
		if w.reported(e.Path) {
			continue
		}
		e.Line = w.lineOf(e.Path)
		errs = append(errs, e)
	}
	return done(errs)
}

// yamlError turns an error from the yaml package into a ConfigError, keeping its line.
func yamlError(err error) *ConfigError {
	msg := err.Error()
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msg = strings.Join(te.Errors, "; ")
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	ce := &ConfigError{Reason: msg}
	// yaml reports "line N: reason".
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, reason, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil {
				ce.Line, ce.Reason = n, reason
			}
		}
	}
	return ce
}

// configErrors flattens an error from Validate into its ConfigErrors.
func configErrors(err error) []*ConfigError {
	if err == nil {
		return nil
	}
	var out []*ConfigError
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var ce *ConfigError
		if errors.As(err, &ce) {
			out = append(out, ce)
			return
		}
		out = append(out, &ConfigError{Reason: err.Error()})
	}
	walk(err)
	return out
}

// applyDefaults fills what a listener from a file leaves empty: the name
// (type and position, "tcp0") and the WebSocket path ("/mqtt"). Validate
// accepts both empty and checks them as these defaults. An empty list from
// the file ("acl: []") becomes nil, as in DefaultConfig.
func (c *Config) applyDefaults() {
	nilEmptySlices(reflect.ValueOf(c).Elem())
	for i := range c.Listeners {
		l := &c.Listeners[i]
		l.Name = listenerName(i, *l)
		if l.Type == "ws" && l.Path == "" {
			l.Path = "/mqtt"
		}
	}
}

// nilEmptySlices sets every empty slice reachable from v to nil.
func nilEmptySlices(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				nilEmptySlices(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			v.Set(reflect.Zero(v.Type()))
		}
		for i := 0; i < v.Len(); i++ {
			nilEmptySlices(v.Index(i))
		}
	}
}

// listenerName is l's name, or its default: the type and its position in the list.
func listenerName(i int, l ListenerConfig) string {
	if l.Name != "" {
		return l.Name
	}
	return l.Type + strconv.Itoa(i)
}

// walker checks a YAML node tree against a Go type before it is decoded.
type walker struct {
	lookup   func(string) (string, bool)
	lines    map[string]int      // key path -> line, for Validate's errors
	expanded map[*yaml.Node]bool // scalars already expanded (aliases share nodes)
	nodes    int                 // nodes visited, bounded by maxConfigNodes
	errs     []*ConfigError
	bad      map[*yaml.Node]bool // nodes with a problem: prune cuts them out
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	byteSizeType = reflect.TypeOf(ByteSize(0))
)

func (w *walker) errorf(n *yaml.Node, path, format string, args ...any) {
	w.errs = append(w.errs, &ConfigError{Line: n.Line, Path: path, Reason: fmt.Sprintf(format, args...)})
	w.bad[n] = true
}

// prune cuts the nodes the walk found bad out of the tree, so that the rest
// decodes and can be validated: a bad key or value in a mapping goes with
// its pair (the field keeps its default), a bad list element becomes null
// (a zero value, so the indices of the others stay as in the file).
func (w *walker) prune(n *yaml.Node, seen map[*yaml.Node]bool) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if seen[n] {
		return
	}
	seen[n] = true
	switch n.Kind {
	case yaml.MappingNode:
		kept := n.Content[:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if w.bad[k] || w.bad[resolveAlias(v)] {
				continue
			}
			w.prune(v, seen)
			kept = append(kept, k, v)
		}
		n.Content = kept
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if w.bad[resolveAlias(c)] {
				n.Content[i] = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: c.Line}
				continue
			}
			w.prune(c, seen)
		}
	}
}

// resolveAlias follows an alias to the node it names.
func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// reported tells whether the walk reported a problem at path or above it.
func (w *walker) reported(path string) bool {
	for _, e := range w.errs {
		if e.Path == "" || path == e.Path || strings.HasPrefix(path, e.Path+".") || strings.HasPrefix(path, e.Path+"[") {
			return true
		}
	}
	return false
}

// lineOf is the line of path's key, or of its nearest parent in the file.
func (w *walker) lineOf(path string) int {
	for path != "" {
		if l, ok := w.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// walk checks n against t at key path. It stops descending where it finds a problem.
func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	w.nodes++
	if w.nodes > maxConfigNodes {
		if w.nodes == maxConfigNodes+1 {
			w.errorf(n, path, "document too large or too deeply aliased (more than %d nodes)", maxConfigNodes)
		}
		return
	}
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			w.errorf(n, path, "unknown alias")
			return
		}
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		switch t.Kind() {
		case reflect.Struct, reflect.Slice, reflect.Map, reflect.Interface:
			// An empty section keeps its defaults; an empty list is an empty list.
			return
		}
		w.errorf(n, path, "no value (write \"\" for an empty string, or leave the key out for the default)")
		return
	}
	switch {
	case t == byteSizeType:
		w.scalar(n, t, path)
	case t.Kind() == reflect.Struct && t != durationType:
		w.mapping(n, t, path)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.errorf(n, path, "want a list (got %s)", describeNode(n))
			return
		}
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.lines[p] = c.Line
			w.walk(c, t.Elem(), p)
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.errorf(n, path, "want a mapping (got %s)", describeNode(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := joinPath(path, k.Value)
			w.lines[p] = k.Line
			w.walk(v, t.Elem(), p)
		}
	default:
		w.scalar(n, t, path)
	}
}

// mapping checks a mapping node against struct type t.
func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		what := "section"
		if path == "" {
			what = "mapping of sections"
		}
		w.errorf(n, path, "want a %s (got %s)", what, describeNode(n))
		return
	}
	fields := yamlFields(t)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge" {
			// A merge key: the aliased mapping(s) hold fields of this same struct.
			if v.Kind == yaml.SequenceNode {
				for _, m := range v.Content {
					w.walk(m, t, path)
				}
			} else {
				w.walk(v, t, path)
			}
			continue
		}
		if k.Kind != yaml.ScalarNode {
			w.errorf(k, path, "want a field name (got %s)", describeNode(k))
			continue
		}
		p := joinPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			w.errorf(k, p, "duplicate key (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		f, ok := fields[k.Value]
		if !ok {
			w.errorf(k, p, "unknown field; valid: %s", strings.Join(sortedKeys(fields), ", "))
			continue
		}
		w.lines[p] = k.Line
		w.walk(v, f.Type, p)
	}
}

// scalar checks a scalar node against a scalar type t by decoding it alone,
// so it accepts exactly what yaml accepts, with a clearer message when it does not.
func (w *walker) scalar(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.ScalarNode {
		w.errorf(n, path, "want %s (got %s)", describeType(t), describeNode(n))
		return
	}
	if !w.expanded[n] {
		w.expanded[n] = true
		if strings.Contains(n.Value, "$") {
			v, err := expandEnv(n.Value, w.lookup)
			if err != nil {
				w.errorf(n, path, "%v", err)
				return
			}
			if v != n.Value {
				n.Value = v
				// Let a plain scalar resolve again from its new text ("${PORT}" -> 1883);
				// quoted or explicitly tagged ones keep their tag.
				if n.Style&(yaml.TaggedStyle|yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0 {
					n.Tag = ""
					if v == "" {
						n.Tag = "!!str"
					}
				}
			}
		}
	}
	if t.Kind() == reflect.Interface {
		return
	}
	if t.Kind() == reflect.Bool {
		// Exactly true or false, quoted or not. yaml also takes YAML 1.1's
		// yes, on, y, True..., which an operator may not mean as true.
		if n.Value != "true" && n.Value != "false" {
			w.errorf(n, path, "want true or false (got %s)", quoteValue(n.Value))
			return
		}
		n.Tag, n.Style = "!!bool", n.Style&^(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle)
	}
	if k := t.Kind(); k >= reflect.Int && k <= reflect.Uintptr && t != durationType && t != byteSizeType && n.ShortTag() != "!!int" {
		// yaml would truncate 1.5 to 1.
		w.errorf(n, path, "want %s (got %s)", describeType(t), quoteValue(n.Value))
		return
	}
	v := reflect.New(t)
	if err := n.Decode(v.Interface()); err != nil {
		if t == byteSizeType {
			w.errorf(n, path, "%s", strings.TrimPrefix(yamlError(err).Reason, "edge: "))
			return
		}
		w.errorf(n, path, "want %s (got %s)", describeType(t), quoteValue(n.Value))
	}
}

// yamlFields maps the yaml keys of struct t to its fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// describeNode names what a node holds, for "want X (got Y)".
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return quoteValue(n.Value)
	}
	return "nothing"
}

func describeType(t reflect.Type) string {
	switch {
	case t == durationType:
		return `a duration such as "10s" or "250ms"`
	case t == byteSizeType:
		return `a size such as 1048576, "256KiB" or "1MiB"`
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "an integer"
	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr:
		return "a non-negative integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Struct:
		return "a section"
	case t.Kind() == reflect.Slice:
		return "a list"
	}
	return t.String()
}

// quoteValue quotes a value for an error message, cut short if long.
func quoteValue(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}

// expandEnv replaces ${NAME} with the value of the environment variable NAME
// and $$ with $. Any other $ is kept. An unset variable, or a ${ without a
// valid name and closing brace, is an error.
func expandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", fmt.Errorf("unclosed ${ in %s (write $$ for a literal $)", quoteValue(s))
			}
			name := s[i+2 : i+2+end]
			if !validEnvName(name) {
				return "", fmt.Errorf("bad variable name %q in %s (want ${NAME} with letters, digits and _; $$ for a literal $)", name, quoteValue(s))
			}
			v, ok := lookup(name)
			if !ok {
				return "", fmt.Errorf("environment variable %s is not set", name)
			}
			b.WriteString(v)
			i += 2 + end
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// UnmarshalYAML reads a size: an integer of bytes, or a number with a unit:
// B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024),
// such as "256KiB", "1.5GB" or "512 MiB". Units are case-insensitive.
func (s *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("edge: want a size such as 1048576, \"256KiB\" or \"1MiB\" (got a %s)", map[yaml.Kind]string{yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}[n.Kind])
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// byteUnits are the units ParseByteSize accepts, lower case.
var byteUnits = map[string]float64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// ParseByteSize parses a size as UnmarshalYAML does ("256KiB", "1GB", "4096").
func ParseByteSize(text string) (ByteSize, error) {
	s := strings.TrimSpace(text)
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	mult, ok := byteUnits[unit]
	bad := func() (ByteSize, error) {
		return 0, fmt.Errorf("edge: want a size such as 1048576, \"256KiB\" or \"1MiB\" (got %s)", quoteValue(text))
	}
	if num == "" || !ok {
		return bad()
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || (mult > 1 && n > math.MaxInt64/int64(mult)) {
			return 0, fmt.Errorf("edge: size too large (got %s)", quoteValue(text))
		}
		return ByteSize(n * int64(mult)), nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return bad()
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("edge: size too large (got %s)", quoteValue(text))
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("edge: size is not a whole number of bytes (got %s)", quoteValue(text))
	}
	return ByteSize(v), nil
}

// formatBytes writes a size the way a config file would: "1MiB", "1500B".
func formatBytes(s ByteSize) string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}
