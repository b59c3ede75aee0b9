package bridge

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// subscriptions remembers, per bridge, the downlink filters the bridge may
// hold at its upstream: a persistent upstream session keeps them across
// reconnects, reloads and restarts of edgemq, and MQTT has no way to ask
// the upstream which it holds. On connecting to a resumed session a bridge
// unsubscribes what it remembers and no longer wants (a rule removed
// while edgemq was down, or by a reload).
//
// With a directory each bridge's set is a file <dir>/<name>.subscriptions,
// one filter a line, replaced atomically (written, fsynced, renamed, the
// directory fsynced); without one the sets live as long as the Set. The
// memory copy is the one read; the files are read once, at first use.
type subscriptions struct {
	dir string

	mu   sync.Mutex // guards sets
	sets map[string][]string
}

func newSubscriptions(dir string) *subscriptions {
	return &subscriptions{dir: dir, sets: map[string][]string{}}
}

func (s *subscriptions) path(name string) string {
	return filepath.Join(s.dir, name+".subscriptions")
}

// get returns the filters remembered for the bridge name (sorted).
func (s *subscriptions) get(name string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if set, ok := s.sets[name]; ok || s.dir == "" {
		return set, nil
	}
	b, err := os.ReadFile(s.path(name))
	if errors.Is(err, os.ErrNotExist) {
		s.sets[name] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read subscriptions: %w", err)
	}
	var set []string
	for _, f := range strings.Split(string(b), "\n") {
		if f != "" {
			set = append(set, f)
		}
	}
	slices.Sort(set)
	s.sets[name] = slices.Compact(set)
	return s.sets[name], nil
}

// set makes filters the bridge's remembered set, durably before it returns
// (a topic filter holds no newline [MQTT-4.7.3-1]: UTF-8 without U+0000,
// and edgemq's filters are checked by qos.CheckFilter). An unchanged set
// writes nothing.
func (s *subscriptions) set(name string, filters []string) error {
	filters = slices.Compact(slices.Sorted(slices.Values(filters)))
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.sets[name]; ok && slices.Equal(old, filters) {
		return nil
	}
	if s.dir != "" {
		if err := s.write(name, filters); err != nil {
			return err
		}
	}
	s.sets[name] = filters
	return nil
}

// remove forgets every bridge but keep: their files go.
func (s *subscriptions) remove(keep map[string]bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.sets {
		if !keep[name] {
			delete(s.sets, name)
		}
	}
	if s.dir == "" {
		return nil
	}
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", s.dir, err)
	}
	var errs []error
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".subscriptions")
		if ok && !keep[name] {
			errs = append(errs, os.Remove(filepath.Join(s.dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

func (s *subscriptions) write(name string, filters []string) error {
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return fmt.Errorf("write subscriptions: %w", err)
	}
	tmp := s.path(name) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write subscriptions: %w", err)
	}
	var b strings.Builder
	for _, flt := range filters {
		b.WriteString(flt)
		b.WriteByte('\n')
	}
	_, err = f.WriteString(b.String())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(name))
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write subscriptions: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
