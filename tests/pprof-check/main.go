// Command pprof-check reads a profile.proto file, gzipped or not, with
// Google's parser (github.com/google/pprof/profile), runs its CheckValid, and
// prints what the Rust tests assert on (tests/support/pprof_tools.rs), one
// tab-separated record a line:
//
//	meta	<key>	<value>         period_type, period, time_nanos, duration_nanos, samples
//	sample_type	<type/unit>    in order
//	total	<type/unit>	<sum>
//	flat	<function>	<v>...    values whose leaf frame is <function>
//	cum	<function>	<v>...     values of the samples with <function> anywhere
//	stack	<v,v,...>	<frame>... one per sample, frames leaf first
//	mapping	<file>	<start>	<limit>	<offset>	<build_id>	<has_functions>
//	label	<key>	<value>        distinct values; numeric ones as "512 bytes"
//	comment	<text>
//
// As in pprof, a location's lines list the innermost inline frame first:
// flat goes to the first line of the first location, cum to each distinct
// function name of the stack once per sample. A location without lines is
// named by its address ("0x1f00"). Fields escape \ tab newline CR as
// \\ \t \n \r. On a parse or validity error it exits 1, the error on stderr.
// Unlike profile.Parse it never falls back to legacy text formats.
package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io/ioutil"
	"os"
	"sort"
	"strings"

	"github.com/google/pprof/profile"
)

var escaper = strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)

// record formats one output line, escaping each field.
func record(fields ...interface{}) string {
	parts := make([]string, len(fields))
	for i, f := range fields {
		parts[i] = escaper.Replace(fmt.Sprint(f))
	}
	return strings.Join(parts, "\t")
}

func parse(path string) (*profile.Profile, error) {
	data, err := ioutil.ReadFile(path)
	if err == nil && len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
		var gz *gzip.Reader
		if gz, err = gzip.NewReader(bytes.NewReader(data)); err == nil {
			data, err = ioutil.ReadAll(gz)
		}
	}
	if err != nil {
		return nil, err
	}
	p, err := profile.ParseUncompressed(data)
	if err != nil {
		return nil, fmt.Errorf("parsing profile: %v", err)
	}
	if err := p.CheckValid(); err != nil {
		return nil, fmt.Errorf("malformed profile: %v", err)
	}
	return p, nil
}

// sums maps a function name to one sum per sample type.
type sums map[string][]int64

func (m sums) add(name string, values []int64) {
	if m[name] == nil {
		m[name] = make([]int64, len(values))
	}
	for i, v := range values {
		m[name][i] += v
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pprof-check PROFILE")
		os.Exit(2)
	}
	p, err := parse(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	out := []string{
		record("meta", "period_type", p.PeriodType.Type+"/"+p.PeriodType.Unit),
		record("meta", "period", p.Period),
		record("meta", "time_nanos", p.TimeNanos),
		record("meta", "duration_nanos", p.DurationNanos),
		record("meta", "samples", len(p.Sample)),
	}
	totals, flat, cum := make([]int64, len(p.SampleType)), sums{}, sums{}
	labels := map[string]bool{}
	for _, s := range p.Sample {
		stack, values := []interface{}{"stack", ""}, make([]string, len(s.Value))
		for i, v := range s.Value {
			totals[i] += v
			values[i] = fmt.Sprint(v)
		}
		stack[1] = strings.Join(values, ",")
		seen := map[string]bool{}
		for _, loc := range s.Location {
			names := []string{fmt.Sprintf("0x%x", loc.Address)}
			if len(loc.Line) > 0 {
				names = names[:0]
			}
			for _, ln := range loc.Line {
				names = append(names, ln.Function.Name)
			}
			for _, name := range names {
				if len(stack) == 2 {
					flat.add(name, s.Value)
				}
				if !seen[name] {
					seen[name] = true
					cum.add(name, s.Value)
				}
				stack = append(stack, name)
			}
		}
		out = append(out, record(stack...))
		for key, vs := range s.Label {
			for _, v := range vs {
				labels[record("label", key, v)] = true
			}
		}
		for key, ns := range s.NumLabel {
			for i, n := range ns {
				v := fmt.Sprint(n)
				if i < len(s.NumUnit[key]) && s.NumUnit[key][i] != "" {
					v += " " + s.NumUnit[key][i]
				}
				labels[record("label", key, v)] = true
			}
		}
	}
	for i, st := range p.SampleType {
		out = append(out, record("sample_type", st.Type+"/"+st.Unit),
			record("total", st.Type+"/"+st.Unit, totals[i]))
	}
	var sorted []string
	for kind, m := range map[string]sums{"flat": flat, "cum": cum} {
		for name, vs := range m {
			fields := []interface{}{kind, name}
			for _, v := range vs {
				fields = append(fields, v)
			}
			sorted = append(sorted, record(fields...))
		}
	}
	for l := range labels {
		sorted = append(sorted, l)
	}
	sort.Strings(sorted)
	out = append(out, sorted...)
	for _, m := range p.Mapping {
		out = append(out, record("mapping", m.File, m.Start, m.Limit, m.Offset, m.BuildID, m.HasFunctions))
	}
	for _, c := range p.Comments {
		out = append(out, record("comment", c))
	}
	fmt.Println(strings.Join(out, "\n"))
}
