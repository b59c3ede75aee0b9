package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// writeMarkdown renders a comparison as the Markdown tables of the README:
// medians per scenario and broker, then the edgemq ratios. It needs only
// the report, so a saved JSON can be rendered again (`edgemq-bench report`).
func writeMarkdown(w io.Writer, rep compareReport) {
	pinned := ""
	if rep.Pinned {
		pinned = fmt.Sprintf(" Brokers pinned to CPU %d, the generator to CPU %d (-pin).", brokerCPU, generatorCPU)
	}
	fmt.Fprintf(w, "Machine: %s. %d round(s), %.0f s in all, started %s; highest load average at the start of a run: %.1f.%s\n\n",
		rep.Machine, rep.Rounds, rep.Seconds, rep.Started.Format("2006-01-02 15:04 MST"), rep.LoadAvg, pinned)
	fmt.Fprintln(w, "| scenario | broker | median | unit | rounds min-max | lost | dup | broker CPU s / M msgs | peak RSS MB | generator CPU s |")
	fmt.Fprintln(w, "|---|---|---:|---|---|---|---:|---:|---:|---:|")
	var scenarios, brokers []string
	byKey := map[[2]string]*cell{}
	for _, c := range rep.Cells {
		byKey[[2]string{c.Scenario, c.Broker}] = c
		if !slices.Contains(scenarios, c.Scenario) {
			scenarios = append(scenarios, c.Scenario)
		}
		if !slices.Contains(brokers, c.Broker) {
			brokers = append(brokers, c.Broker)
		}
	}
	for _, c := range rep.Cells {
		if len(c.Values) == 0 {
			fmt.Fprintf(w, "| %s | %s | error | %s | | | | | | |\n", c.Scenario, c.Broker, c.Unit)
			continue
		}
		lost := "0"
		if c.Lossy {
			lost = fmt.Sprintf("**%d (%.1f%%) LOSSY**", c.Lost, 100*float64(c.Lost)/float64(max(c.Expected, 1)))
		}
		cpu := "-"
		if c.CPUPerM > 0 {
			cpu = fmt.Sprintf("%.1f", c.CPUPerM)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s-%s | %s | %d | %s | %.1f | %.2f |\n", c.Scenario, c.Broker,
			fmtValue(c.Median), c.Unit, fmtValue(slices.Min(c.Values)), fmtValue(slices.Max(c.Values)),
			lost, c.Duplicated, cpu, c.PeakRSSMB, c.GenCPU)
	}
	table := func(head []string, rows [][]string) {
		fmt.Fprintln(w, "| "+strings.Join(head, " | ")+" |")
		fmt.Fprintln(w, "|"+strings.Repeat("---|", len(head)))
		for _, r := range rows {
			fmt.Fprintln(w, "| "+strings.Join(r, " | ")+" |")
		}
	}
	if head, rows := ratioTable(rep); len(rows) > 0 {
		fmt.Fprintln(w, "\nRatios of the medians (msg/s: higher is better; p99 ms and KB/conn: lower is better), each against")
		fmt.Fprintln(w, "the Mosquitto configuration that lost nothing in that scenario (the better one if both did):")
		fmt.Fprintln(w)
		table(head, rows)
	}
	if lines := steadyMargins(rep); len(lines) > 0 {
		fmt.Fprintf(w, "\n%s: end-to-end p99 above the disk's fsync p99 (median of each run's difference):\n\n", steadyName)
		for _, l := range lines {
			fmt.Fprintf(w, "- `%s`\n", l)
		}
	}
	if head, rows := footprintTable(rep); len(rows) > 0 {
		fmt.Fprintln(w, "\nFootprint (medians): the idle broker, with idle connections, and at its peak under the steady QoS 1 load:")
		fmt.Fprintln(w)
		table(head, rows)
	}
	fmt.Fprintln(w)
	for _, b := range brokers {
		fmt.Fprintf(w, "- `%s`: %s\n", b, rep.Brokers[b])
	}
}

// runReport renders a saved comparison (compare -json) again.
func runReport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgemq-bench report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: edgemq-bench report runs.json   (Markdown tables of a saved comparison)")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("report: want one JSON file")
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var rep compareReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("report: %s: %w", fs.Arg(0), err)
	}
	writeMarkdown(stdout, rep)
	return nil
}
