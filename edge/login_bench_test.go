package edge_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/edgemq/edgemq/edge"
)

// BenchmarkFleetReconnect: a fleet of devices, each its own user with a
// password (bcrypt cost edge.PasswordCost), connects at once, 64 at a
// time, as after a broker restart ("cold": every login runs bcrypt) and
// again as after a network cut with the broker up ("warm": the cache of
// verified credentials answers). It reports seconds per fleet and the
// CPU-bound login rate. EDGEMQ_BENCH_DEVICES sets the fleet (default
// 1000; docs/security.md has runs of 200, 1,000 and 10,000). Run with
// -benchtime=1x:
//
//	EDGEMQ_BENCH_DEVICES=10000 go test ./edge -run '^$' -bench BenchmarkFleetReconnect -benchtime=1x
func BenchmarkFleetReconnect(b *testing.B) {
	devices := 1000
	if s := os.Getenv("EDGEMQ_BENCH_DEVICES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("EDGEMQ_BENCH_DEVICES=%q", s)
		}
		devices = n
	}
	for _, phase := range []string{"cold", "warm"} {
		b.Run(phase, func(b *testing.B) {
			// The warm pass runs no bcrypt (every login is a cache hit), so
			// the pass that fills the cache verifies hashes of the lowest
			// cost: at edge.PasswordCost it would cost another cold pass.
			cost := edge.PasswordCost
			if phase == "warm" {
				cost = bcrypt.MinCost
			}
			path := fleetPasswords(b, devices, cost)
			for range b.N {
				b.StopTimer()
				br := benchBroker(b, "never", func(c *edge.Config) {
					c.Auth.PasswordFile = path
					c.Auth.CacheTTL = time.Hour // longer than filling it takes on a busy machine
				})
				addr := br.Addr("tcp").String()
				if phase == "warm" {
					fleetConnect(b, addr, devices) // fills the cache
				}
				b.StartTimer()
				start := time.Now()
				busy := fleetConnect(b, addr, devices)
				b.ReportMetric(time.Since(start).Seconds(), "s/fleet")
				b.ReportMetric(float64(busy), "busy-retries")
				b.ReportMetric(float64(devices)/time.Since(start).Seconds(), "logins/s")
			}
		})
	}
}

// fleetPasswords writes a password file of users dev0..devN-1, one hash
// of the given cost for all: the same cost to verify, without paying
// bcrypt 10,000 times to write the file.
func fleetPasswords(b *testing.B, devices, cost int) string {
	b.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("device-secret"), cost)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "passwd")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	for i := range devices {
		fmt.Fprintf(f, "dev%d:%s\n", i, hash)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// fleetConnect connects devices dev0..devN-1 over v3.1.1, 64 at a time,
// and closes each after its CONNACK. A device refused as busy (0x03: no
// bcrypt slot within the connect timeout) tries again 100 ms later, as a
// device would; it returns how many times that happened.
func fleetConnect(b *testing.B, addr string, devices int) (busy int64) {
	b.Helper()
	var wg sync.WaitGroup
	next := make(chan int)
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				err := deviceConnect(addr, i)
				for errors.Is(err, errBusy) {
					atomic.AddInt64(&busy, 1)
					time.Sleep(100 * time.Millisecond)
					err = deviceConnect(addr, i)
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range devices {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return busy
}

var errBusy = errors.New("server busy")

func deviceConnect(addr string, i int) error {
	c, err := dialTimeout(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	user := "dev" + strconv.Itoa(i)
	pk, err := encodePacket(4, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: user, Clean: true, Keepalive: 60,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte("device-secret")}})
	if err != nil {
		return err
	}
	if _, err := c.Write(pk); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	ack := make([]byte, 4)
	if _, err := c.Read(ack); err != nil {
		return fmt.Errorf("%s: %w", user, err)
	}
	if ack[0] == packets.Connack<<4 && ack[3] == packets.Err3ServerUnavailable.Code {
		return errBusy
	}
	if ack[0] != packets.Connack<<4 || ack[3] != 0 {
		return fmt.Errorf("%s: connack % x", user, ack)
	}
	return nil
}

func dialTimeout(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }

// BenchmarkPasswordCheck is one bcrypt comparison at edge.PasswordCost: the
// CPU a login costs without the cache. A fleet's cold reconnect takes about
// devices x this / max(1, CPUs/2).
func BenchmarkPasswordCheck(b *testing.B) {
	hash, err := bcrypt.GenerateFromPassword([]byte("device-secret"), edge.PasswordCost)
	if err != nil {
		b.Fatal(err)
	}
	pw := edge.Passwords{"dev": hash}
	for b.Loop() {
		if !pw.Check("dev", []byte("device-secret")) {
			b.Fatal("check failed")
		}
	}
}
