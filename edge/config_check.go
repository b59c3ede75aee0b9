package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// configFiles is what a configuration names outside itself, read and
// compiled: New builds the broker from it, and CheckConfig reports its
// problems, so both go through the same code.
type configFiles struct {
	passwords Passwords     // nil: no password file
	acl       *acl          // compiled auth.acl
	tls       []*tls.Config // by listener index; nil: plain TCP or WebSocket
}

// readFiles loads the password file and every listener's TLS files and
// compiles the ACL. It returns every problem, each a *ConfigError with the
// key path of the field it is about (no file or line: the caller adds them).
func readFiles(cfg Config) (configFiles, []*ConfigError) {
	var files configFiles
	var problems []*ConfigError
	if cfg.Auth.PasswordFile != "" {
		pw, err := LoadPasswordFile(cfg.Auth.PasswordFile)
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap() // one problem per bad line of the file
		}
		for _, e := range errs {
			if e != nil {
				problems = append(problems, &ConfigError{Path: "auth.password_file", Reason: e.Error()})
			}
		}
		files.passwords = pw
	}
	a, err := compileACL(cfg.Auth.ACL)
	if err != nil {
		problems = append(problems, configErrors(err)...)
	}
	files.acl = a
	files.tls = make([]*tls.Config, len(cfg.Listeners))
	for i, lc := range cfg.Listeners {
		t, err := serverTLS(lc.TLS)
		var ce *ConfigError
		if errors.As(err, &ce) {
			problems = append(problems, &ConfigError{Path: fmt.Sprintf("listeners[%d].tls.%s", i, ce.Path), Reason: ce.Reason})
		} else if err != nil {
			problems = append(problems, &ConfigError{Path: fmt.Sprintf("listeners[%d].tls", i), Reason: err.Error()})
		}
		files.tls[i] = t
	}
	problems = append(problems, checkBridgeFiles(cfg.Bridges)...)
	return files, problems
}

// joinConfigErrors joins problems into one error, which matches ErrConfig.
func joinConfigErrors(problems []*ConfigError) error {
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// EmbeddedDefaults is the name CheckConfig gives the configuration when it
// checks no file.
const EmbeddedDefaults = "embedded defaults"

// ConfigCheck is what CheckConfig found.
type ConfigCheck struct {
	// Name is the file checked, or EmbeddedDefaults.
	Name string
	// Config is the configuration as far as it could be read: the parts of
	// the file with problems keep their defaults.
	Config Config
	// Problems lists every problem of every stage, in the order of the
	// stages: the YAML and its keys and types, the values, then the files
	// the configuration names. Any problem makes the configuration unusable.
	Problems []*ConfigError
	// Warnings are what the broker would change or risk at start on this
	// configuration: listeners moved to loopback, anonymous clients on a
	// listener that is not loopback, a bridge that does not check its
	// upstream's certificate.
	Warnings []*ConfigError

	lineOf func(string) int
}

// At makes a problem or a warning about the field at path, with the file
// and the line of its key.
func (c *ConfigCheck) At(path, format string, args ...any) *ConfigError {
	return &ConfigError{File: c.Name, Line: c.lineOf(path), Path: path, Reason: fmt.Sprintf(format, args...)}
}

// CheckConfig reads the configuration file at path ("": the embedded
// defaults) and reports, in one pass, every problem of every stage: the
// YAML, unknown keys and wrong types, invalid values, the password file,
// the TLS certificates and keys and the ACL. It binds nothing and does not
// look at the log (CheckStorage does). Every problem and warning reads
// "file:line: field.path: reason", leaving out what is unknown.
func CheckConfig(path string) *ConfigCheck {
	c := &ConfigCheck{Name: path, Config: DefaultConfig(), lineOf: func(string) int { return 0 }}
	if path == "" {
		c.Name = EmbeddedDefaults
		for _, e := range configErrors(c.Config.Validate()) {
			e.File = c.Name
			c.Problems = append(c.Problems, e)
		}
	} else {
		data, err := os.ReadFile(path)
		if err != nil {
			c.Problems = append(c.Problems, &ConfigError{File: path, Reason: fmt.Sprintf("cannot read: %v", err)})
			return c
		}
		c.Config, c.lineOf, c.Problems = readConfig(data, path, os.LookupEnv)
	}
	// The files stage, on what the file gave: a field whose value has a
	// problem already is not reported again (readFiles also checks some
	// of what Validate checks, such as the ACL's access words).
	reported := map[string]bool{}
	for _, p := range c.Problems {
		reported[p.Path] = true
	}
	_, problems := readFiles(c.Config)
	for _, p := range problems {
		if !reported[p.Path] {
			c.Problems = append(c.Problems, c.At(p.Path, "%s", p.Reason))
		}
	}
	cfg := c.Config
	cfg.Listeners = append([]ListenerConfig(nil), cfg.Listeners...)
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Name == "" {
			cfg.Listeners[i].Name = cfg.Listeners[i].Type + strconv.Itoa(i)
		}
	}
	for _, m := range moveToLoopback(&cfg) {
		c.Warnings = append(c.Warnings, c.At(m.path,
			"warning: moved to %s at start: no authentication configured (set auth.password_file, or auth.allow_anonymous to serve anyone)", m.to))
	}
	for _, i := range anonymousExposed(cfg) {
		c.Warnings = append(c.Warnings, c.At(fmt.Sprintf("listeners[%d].address", i),
			"warning: anonymous clients allowed on a listener that is not loopback (%s): anyone who reaches it may publish and subscribe", cfg.Listeners[i].Address))
	}
	for i, bc := range cfg.Bridges {
		if bc.TLS.InsecureSkipVerify {
			c.Warnings = append(c.Warnings, c.At(fmt.Sprintf("bridges[%d].tls.insecure_skip_verify", i),
				"warning: the upstream's certificate is not checked: anyone on the path can read and change the bridge's traffic (set tls.ca_file instead)"))
		}
	}
	return c
}
