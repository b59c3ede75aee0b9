package edge

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
)

// PasswordCost is the bcrypt cost of hashes written by SetPassword.
const PasswordCost = 10

// Passwords maps a username to its bcrypt hash.
type Passwords map[string][]byte

// LoadPasswordFile reads a file of "user:bcrypt-hash" lines. Blank lines and
// lines whose first non-blank character is '#' are skipped; a CR before the
// newline and blanks after the hash are ignored, but a username is taken as
// it is, never trimmed (see ValidUsername). Every line that is not a valid
// user and a bcrypt hash is reported, each with its line number, joined in
// one error; the hash is never echoed.
func LoadPasswordFile(path string) (Passwords, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	pw := Passwords{}
	var bad []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		switch {
		case !ok || user == "":
			bad = append(bad, fmt.Errorf("password file %s:%d: want user:bcrypt-hash", path, n))
		case ValidUsername(user) != nil:
			bad = append(bad, fmt.Errorf("password file %s:%d: username %q: %w", path, n, user, ValidUsername(user)))
		default:
			hash = strings.TrimRight(hash, " \t")
			if _, err := bcrypt.Cost([]byte(hash)); err != nil {
				bad = append(bad, fmt.Errorf("password file %s:%d: user %q: not a bcrypt hash", path, n, user))
				continue
			}
			pw[user] = []byte(hash)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("password file %s: %w", path, err)
	}
	if len(bad) > 0 {
		return nil, errors.Join(bad...)
	}
	return pw, nil
}

// ValidUsername says why a username cannot be in a password file, or nil:
// it must be non-empty valid UTF-8 with no ':' (the separator), no control
// characters, no blank at either end (a file line is not trimmed into
// another user) and no '#' first (the line would be a comment).
func ValidUsername(user string) error {
	switch {
	case user == "":
		return errors.New("empty")
	case !utf8.ValidString(user):
		return errors.New("not valid UTF-8")
	case strings.HasPrefix(user, "#"):
		return errors.New("starts with '#', which makes the line a comment")
	case strings.TrimSpace(user) != user:
		return errors.New("starts or ends with a blank")
	case strings.ContainsRune(user, ':'):
		return errors.New("holds ':', the separator")
	case strings.IndexFunc(user, unicode.IsControl) >= 0:
		return errors.New("holds a control character")
	}
	return nil
}

// Check reports whether password is user's password. An unknown user costs
// the same bcrypt comparison, so timing does not reveal which users exist.
func (p Passwords) Check(user string, password []byte) bool {
	hash, ok := p[user]
	if !ok {
		_ = bcrypt.CompareHashAndPassword(dummyHash(), password)
		return false
	}
	return bcrypt.CompareHashAndPassword(hash, password) == nil
}

// dummyHash is compared against for unknown users. It is made on first use,
// not at start: a bcrypt hash costs tens of milliseconds, which every program
// and test importing this package would otherwise pay.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("edgemq-no-such-user"), PasswordCost)
	return h
})

// SetPassword adds or replaces user's password in the file at path, creating
// the file (mode 0600) if needed, like mosquitto_passwd. The file is replaced
// atomically; comment lines in it are not kept.
func SetPassword(path, user, password string) error {
	if err := ValidUsername(user); err != nil {
		return fmt.Errorf("passwd: username %q: %w", user, err)
	}
	if password == "" {
		return errors.New("passwd: empty password")
	}
	pw := Passwords{}
	if _, err := os.Stat(path); err == nil {
		if pw, err = LoadPasswordFile(path); err != nil {
			return err
		}
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), PasswordCost)
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	pw[user] = hash
	return writePasswordFile(path, pw)
}

// ErrNoSuchUser is returned by DeletePassword for a user not in the file.
var ErrNoSuchUser = errors.New("passwd: no such user")

// DeletePassword removes user from the file at path, like mosquitto_passwd -D.
// The file is replaced atomically; comment lines in it are not kept.
func DeletePassword(path, user string) error {
	pw, err := LoadPasswordFile(path)
	if err != nil {
		return err
	}
	if _, ok := pw[user]; !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchUser, user)
	}
	delete(pw, user)
	return writePasswordFile(path, pw)
}

// writePasswordFile writes pw to path, sorted by user, through a temporary
// file in the same directory that is synced and renamed over path.
func writePasswordFile(path string, pw Passwords) error {
	users := make([]string, 0, len(pw))
	for u := range pw {
		users = append(users, u)
	}
	sort.Strings(users)
	var buf bytes.Buffer
	for _, u := range users {
		fmt.Fprintf(&buf, "%s:%s\n", u, pw[u])
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".passwd-*")
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("passwd: %w", err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("passwd: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("passwd: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	// Make the rename itself durable.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("passwd: sync %s: %w", dir, err)
	}
	return nil
}
