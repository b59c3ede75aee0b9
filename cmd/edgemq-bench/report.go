package main

import (
	"fmt"
	"io"
	"strings"
)

// printResult writes one run for people.
func printResult(w io.Writer, r Result) {
	head := fmt.Sprintf("%s  %s  MQTT %s  QoS %d", r.Scenario, r.Transport, r.Protocol, r.QoS)
	if r.Broker != "" {
		head = r.Broker + "  " + head
	}
	switch {
	case r.Scenario == "conns":
		head += fmt.Sprintf("  %d idle connections", r.Conns)
	default:
		head += fmt.Sprintf("  %d pub -> %d sub  %d B", r.Publishers, r.Subscribers, r.PayloadBytes)
	}
	if r.Window > 0 {
		head += fmt.Sprintf("  window %d", r.Window)
	}
	if r.TargetRate > 0 {
		head += fmt.Sprintf("  target %d msg/s", r.TargetRate)
	}
	fmt.Fprintln(w, head)
	if r.Scenario == "conns" {
		fmt.Fprintf(w, "  connected %d in %.2f s (%.0f/s)", r.Conns, r.Seconds, r.ConnectPerSec)
		if r.RSSPerConnKB != 0 {
			fmt.Fprintf(w, "; broker RSS %.1f KB per connection", r.RSSPerConnKB)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "  published %d  acknowledged %d  rejected %d  unacked %d\n",
			r.Published, r.Acknowledged, r.Rejected, r.Unacked)
		fmt.Fprintf(w, "  expected %d  delivered %d  duplicated %d  lost %d  reordered %d  foreign %d\n",
			r.Expected, r.Delivered, r.Duplicated, r.Lost, r.Reordered, r.Foreign)
		verdict := "no loss"
		if r.Lossy {
			verdict = fmt.Sprintf("LOSSY: %d of %d expected deliveries lost (%.2f%%)",
				r.Lost, r.Expected, 100*float64(r.Lost)/float64(max(r.Expected, 1)))
		}
		if r.Duplicated > 0 {
			verdict += fmt.Sprintf(", %d DUPLICATES", r.Duplicated)
		}
		what := "msg/s delivered"
		if r.Scenario == "backlog" {
			what = fmt.Sprintf("msg/s drained (%.2f s)", r.DrainSeconds)
		}
		fmt.Fprintf(w, "  %.0f %s over %.2f s (published %.0f/s): %s\n", r.MsgPerSec, what, r.Seconds, r.PublishPerSec, verdict)
		if r.WindowReclaimed > 0 {
			fmt.Fprintf(w, "  closed loop: %d tokens taken back from messages not delivered within 1 s\n", r.WindowReclaimed)
		}
		if l := r.Latency; l != nil && l.Samples > 0 {
			fmt.Fprintf(w, "  latency ms: p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (%d samples)\n", l.P50, l.P99, l.P999, l.Max, l.Samples)
		}
		if f := r.Fsync; f != nil && f.Samples > 0 {
			fmt.Fprintf(w, "  fsync of the disk ms (during the run): p50 %.3f  p99 %.3f  max %.3f  (%d samples)\n", f.P50, f.P99, f.Max, f.Samples)
		}
		for _, ph := range r.Phases {
			fmt.Fprintf(w, "    %-10s %6d msg/s: p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms",
				ph.Name, ph.Rate, ph.Latency.P50, ph.Latency.P99, ph.Latency.P999, ph.Latency.Max)
			if ph.RecoverySeconds > 0 {
				fmt.Fprintf(w, "  (slow for %.2f s after the spike)", ph.RecoverySeconds)
			}
			fmt.Fprintln(w)
		}
	}
	cpu := fmt.Sprintf("  generator CPU %.2f s", r.GenCPUSeconds)
	if r.BrokerCPUSeconds > 0 {
		cpu += fmt.Sprintf("; broker CPU %.2f s", r.BrokerCPUSeconds)
		if r.CPUSecPerMillion > 0 {
			cpu += fmt.Sprintf(" (%.2f s per million deliveries)", r.CPUSecPerMillion)
		}
		cpu += fmt.Sprintf(", %.1f%% of a core", r.BrokerCPUPercent)
	}
	if r.BrokerPeakRSSMB > 0 {
		cpu += fmt.Sprintf("; broker peak RSS %.1f MB", r.BrokerPeakRSSMB)
	}
	fmt.Fprintln(w, cpu)
	for _, n := range r.Notes {
		fmt.Fprintln(w, "  note: "+strings.TrimSpace(n))
	}
}
