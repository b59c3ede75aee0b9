package edge

import (
	"fmt"
	"reflect"
	"strings"
)

// Reload puts in force, without a restart and without dropping a client,
// what may change while the broker runs:
//   - the password file, read again (verified credentials are forgotten);
//   - the ACL;
//   - each TLS listener's certificate, key, client CAs and whether a
//     client certificate is required, read again: new handshakes use them
//     (certificate rotation), established connections keep theirs;
//   - the bridges: new ones start, removed ones stop, changed ones restart,
//     and a forward rule that did not change keeps its cursor (nothing sent
//     twice or skipped); their TLS files are read again.
//
// cfg is checked as a whole first, as New and `edgemq check` check it
// (Validate, then the files it names); on any problem Reload returns it,
// every problem joined (errors.Is(err, ErrConfig)), and changes nothing:
// the running configuration stays. Sections that differ from the
// configuration the broker started with in anything else need a restart:
// Reload logs each at Warn and leaves it as it was. Sessions that exist keep
// their owner; a client already connected keeps its access until its ACL
// checks, which read the new rules at once.
//
// Reload is the one entry point for reloading (SIGHUP in `edgemq run`);
// parts that learn to reload belong here. Calls are serialised.
func (b *Broker) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	files, problems := readFiles(cfg)
	if len(problems) > 0 {
		return joinConfigErrors(problems)
	}
	if len(cfg.Listeners) != len(b.listeners) {
		return &ConfigError{Path: "listeners", Reason: fmt.Sprintf("adding or removing a listener needs a restart (got %d, running %d)", len(cfg.Listeners), len(b.listeners))}
	}
	for i := range cfg.Listeners {
		if (files.tls[i] == nil) != (b.cfg.Listeners[i].TLS.CertFile == "") {
			return &ConfigError{Path: fmt.Sprintf("listeners[%d].tls.cert_file", i), Reason: fmt.Sprintf("turning TLS on or off needs a restart (got %q)", cfg.Listeners[i].TLS.CertFile)}
		}
	}
	b.reloadMu.Lock()
	defer b.reloadMu.Unlock()
	rotated := 0
	for i, l := range b.listeners {
		if files.tls[i] != nil {
			l.setTLS(files.tls[i])
			rotated++
		}
	}
	b.auth.setPolicy(&authPolicy{passwords: files.passwords, acl: files.acl})
	if err := b.reloadBridges(cfg.Bridges); err != nil {
		b.log.Error("bridges not all restarted", "error", err)
	}
	b.given.Bridges = cfg.Bridges
	for _, f := range restartOnly(b.given, cfg) {
		b.log.Warn("configuration change not applied: it needs a restart", "section", f)
	}
	b.given.Auth.PasswordFile, b.given.Auth.ACL = cfg.Auth.PasswordFile, cfg.Auth.ACL
	for i := range b.given.Listeners {
		b.given.Listeners[i].TLS = reloadableTLS(b.given.Listeners[i].TLS, cfg.Listeners[i].TLS)
	}
	b.log.Info("configuration reloaded", "users", len(files.passwords), "acl_rules", len(cfg.Auth.ACL), "tls_listeners", rotated, "bridges", len(cfg.Bridges))
	return nil
}

// reloadableTLS is old with what Reload applies taken from new.
func reloadableTLS(old, new TLSConfig) TLSConfig {
	old.CertFile, old.KeyFile, old.ClientCAFile, old.RequireClientCert = new.CertFile, new.KeyFile, new.ClientCAFile, new.RequireClientCert
	return old
}

// restartOnly names the sections of next (by YAML key, "auth.x" within
// auth) that differ from cur in what Reload does not apply.
func restartOnly(cur, next Config) []string {
	cur.Listeners = append([]ListenerConfig(nil), cur.Listeners...)
	for i := range min(len(cur.Listeners), len(next.Listeners)) {
		cur.Listeners[i].TLS = reloadableTLS(cur.Listeners[i].TLS, next.Listeners[i].TLS)
	}
	cur.Auth.PasswordFile, cur.Auth.ACL = next.Auth.PasswordFile, next.Auth.ACL
	cur.Bridges = next.Bridges
	var out []string
	diff := func(prefix string, a, b reflect.Value) {
		for i := range a.NumField() {
			if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
				tag, _, _ := strings.Cut(a.Type().Field(i).Tag.Get("yaml"), ",")
				out = append(out, prefix+tag)
			}
		}
	}
	cv, nv := reflect.ValueOf(cur), reflect.ValueOf(next)
	for i := range cv.NumField() {
		tag, _, _ := strings.Cut(cv.Type().Field(i).Tag.Get("yaml"), ",")
		if tag == "auth" {
			diff("auth.", cv.Field(i), nv.Field(i))
			continue
		}
		if !reflect.DeepEqual(cv.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, tag)
		}
	}
	return out
}
