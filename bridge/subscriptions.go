package bridge

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/edgemq/edgemq/wal"
)

// subscriptions remembers, per bridge, the downlink filters the bridge may
// hold at its upstream: a persistent upstream session keeps them across
// reconnects, reloads and restarts of edgemq, and MQTT has no way to ask
// the upstream which it holds. On connecting to a resumed session a bridge
// unsubscribes what it remembers and no longer wants (a rule removed
// while edgemq was down, or by a reload).
//
// With a directory each bridge's set is a file <dir>/<name>.subscriptions,
// a JSON array of the filters (any string a filter may be), replaced
// atomically and durably (wal.WriteFile); without one the sets live as long
// as the Set. The memory copy is the one read; the files are read once, at
// first use.
type subscriptions struct {
	dir string

	mu    sync.Mutex // guards what follows
	sets  map[string][]string
	dirty map[string]bool // sets whose file write failed: written again by the next set
}

func newSubscriptions(dir string) *subscriptions {
	return &subscriptions{dir: dir, sets: map[string][]string{}, dirty: map[string]bool{}}
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
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("read subscriptions %s: %w", s.path(name), err)
	}
	slices.Sort(set)
	s.sets[name] = slices.Compact(set)
	return s.sets[name], nil
}

// set makes filters the bridge's remembered set, in memory at once and
// durably when it returns nil. An error (a full disk) leaves the memory
// copy set and the file as it was; the next set writes it again. An
// unchanged set that is on disk writes nothing.
func (s *subscriptions) set(name string, filters []string) error {
	filters = slices.Compact(slices.Sorted(slices.Values(filters)))
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.sets[name]; ok && slices.Equal(old, filters) && !s.dirty[name] {
		return nil
	}
	s.sets[name] = filters
	if s.dir == "" {
		return nil
	}
	if err := s.write(name, filters); err != nil {
		s.dirty[name] = true
		return err
	}
	delete(s.dirty, name)
	return nil
}

// remove forgets every bridge but keep: their files go.
func (s *subscriptions) remove(keep map[string]bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.sets {
		if !keep[name] {
			delete(s.sets, name)
			delete(s.dirty, name)
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
	b, err := json.Marshal(filters)
	if err == nil {
		err = wal.WriteFile(s.path(name), b, 0o600)
	}
	if err != nil {
		return fmt.Errorf("write subscriptions: %w", err)
	}
	return nil
}

// Subscribed returns the downlink filters the bridge name recorded as
// subscribed at its upstream in dir (Options.StateDir), sorted; none if it
// recorded nothing. For `edgemq check`.
func Subscribed(dir, name string) ([]string, error) {
	return newSubscriptions(dir).get(name)
}
