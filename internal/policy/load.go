package policy

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/retention"
	"github.com/autosnap/autosnap/internal/schedule"
	"github.com/autosnap/autosnap/internal/secret"
	"github.com/autosnap/autosnap/internal/selector"
)

// Defaults applied by Parse.
const (
	DefaultStateDir    = "/var/lib/autosnap"
	DefaultMaxParallel = 4
	DefaultTimeout     = 30 * time.Second
	DefaultWarning     = 2.0
	DefaultCritical    = 3.0
)

// Load reads and parses the policy file at path. See Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy file: %w (write one from examples/autosnap.yaml, or pass --config)", err)
	}
	return Parse(data, path)
}

// Parse parses and validates a policy file; path names it in messages. On failure
// the error is an Errors listing every problem found with its line: malformed YAML,
// unknown keys (with the closest known key), missing or malformed values, duplicate
// names, bad schedules, labels and --vmid selections, retention rules that keep
// nothing, a policy that neither snapshots nor backs up, and policies on one host
// whose selections provably share a guest while they snapshot under one label or
// back up into one target (see Overlaps for the check against real guests).
//
// Defaults: timezone the host's zone, state_dir /var/lib/autosnap, a policy's host
// qemu:///system, max_parallel 4, timeout 30s, a snapshot label the policy's name,
// quiesce auto, a backup level auto, monitor warning 2 and critical 3.
func Parse(data []byte, path string) (*Config, error) {
	p := &parser{path: path}
	cfg := p.parse(data)
	if len(p.errs) > 0 {
		return nil, p.errs.sorted()
	}
	return cfg, nil
}

type parser struct {
	path string
	errs Errors
	loc  *time.Location
	// tsFormat is the format snapshot labels are validated with.
	tsFormat naming.Format
}

func (p *parser) errorf(n *yaml.Node, format string, a ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &Error{Path: p.path, Line: line, Msg: fmt.Sprintf(format, a...)})
}

// yamlLine matches the "line N:" yaml.v3 puts in its syntax errors.
var yamlLine = regexp.MustCompile(`line (\d+): `)

func (p *parser) parse(data []byte) *Config {
	cfg := &Config{Path: p.path, StateDir: DefaultStateDir, Location: time.Local,
		Monitor: Monitor{Warning: DefaultWarning, Critical: DefaultCritical}}
	p.loc = time.Local
	p.tsFormat, _ = naming.ParseFormat(naming.DefaultFormat)
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 0
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = strings.Replace(msg, m[0], "", 1)
		}
		p.errs = append(p.errs, &Error{Path: p.path, Line: line, Msg: "not valid YAML: " + msg})
		return nil
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		p.errs = append(p.errs, &Error{Path: p.path, Line: 1, Msg: "the file is empty: it needs at least a policies: list (see examples/autosnap.yaml)"})
		return nil
	}
	root := doc.Content[0]
	m := p.fields(root, "the file", "timezone", "state_dir", "connections", "policies", "monitor", "notify", "dashboard")
	if m == nil {
		return nil
	}
	if kv, ok := m["timezone"]; ok {
		if s, ok := p.str(kv); ok {
			loc, err := time.LoadLocation(s)
			if err != nil || s == "" {
				p.errorf(kv.v, "timezone %q: not a known time zone: use an IANA name such as Europe/Berlin, UTC or Local", s)
			} else {
				p.loc = loc
				cfg.Location = loc
			}
		}
	}
	if kv, ok := m["state_dir"]; ok {
		if s, ok := p.str(kv); ok {
			if !filepath.IsAbs(s) {
				p.errorf(kv.v, "state_dir %q: use an absolute path such as %s", s, DefaultStateDir)
			} else {
				cfg.StateDir = filepath.Clean(s)
			}
		}
	}
	if kv, ok := m["connections"]; ok {
		cfg.Connections = p.connections(kv)
	}
	if kv, ok := m["policies"]; ok {
		cfg.Policies = p.policies(kv, cfg)
	} else if len(p.errs) == 0 {
		p.errorf(root, "no policies: key: add a list of policies (see examples/autosnap.yaml)")
	}
	if kv, ok := m["monitor"]; ok {
		p.monitor(kv, &cfg.Monitor)
	}
	if kv, ok := m["notify"]; ok {
		p.notify(kv, &cfg.Notify)
	}
	if kv, ok := m["dashboard"]; ok {
		p.dashboard(kv, &cfg.Dashboard)
	}
	if len(p.errs) == 0 {
		for _, c := range cfg.staticConflicts() {
			p.errs = append(p.errs, &Error{Path: p.path, Line: c.LineB, Msg: c.String()})
		}
	}
	return cfg
}

// kv is one key of a mapping with its value.
type kv struct {
	k, v *yaml.Node
}

// hints say where a key that is unknown in one place belongs.
var hints = map[string]string{
	"keep_last": "snapshot: or backup: prune:", "keep_hourly": "snapshot: or backup: prune:", "keep_daily": "snapshot: or backup: prune:",
	"keep_weekly": "snapshot: or backup: prune:", "keep_monthly": "snapshot: or backup: prune:", "keep_yearly": "snapshot: or backup: prune:",
	"keep_within": "snapshot: or backup: prune:", "schedule": "snapshot: or backup:", "label": "snapshot:", "target": "backup:",
	"levels": "backup:", "level": "backup: or an entry of backup: levels:", "vmid": "a policy", "host": "a policy or a connection",
}

// fields checks that n is a mapping whose keys are all in known, each once, and
// returns its entries by key; nil (after reporting) when n is not a mapping.
func (p *parser) fields(n *yaml.Node, what string, known ...string) map[string]kv {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			p.errorf(n, "%s is empty: it needs keys (%s)", what, strings.Join(known, ", "))
			return nil
		}
		p.errorf(n, "%s must be a mapping of keys (%s), not %s", what, strings.Join(known, ", "), kindName(n))
		return nil
	}
	out := map[string]kv{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, "%s: a key must be a plain word", what)
			continue
		}
		if k.Value == "<<" {
			p.errorf(k, "%s: YAML merge keys (<<) are not supported: write the keys out", what)
			continue
		}
		known1 := false
		for _, c := range known {
			if c == k.Value {
				known1 = true
				break
			}
		}
		if !known1 {
			msg := fmt.Sprintf("unknown key %q in %s", k.Value, what)
			if s := suggest(k.Value, known); s != "" {
				msg += fmt.Sprintf(": did you mean %q?", s)
			} else if h, ok := hints[strings.ToLower(k.Value)]; ok {
				msg += fmt.Sprintf(": it belongs under %s", h)
			} else {
				msg += fmt.Sprintf(" (known keys: %s)", strings.Join(known, ", "))
			}
			p.errorf(k, "%s", msg)
			continue
		}
		if prev, dup := out[k.Value]; dup {
			p.errorf(k, "%s: key %q given twice (first on line %d)", what, k.Value, prev.k.Line)
			continue
		}
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		out[k.Value] = kv{k, v}
	}
	return out
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "this"
}

// str returns a scalar value as text, whatever its YAML type (vmid: 100 is "100").
func (p *parser) str(e kv) (string, bool) {
	if e.v.Kind != yaml.ScalarNode || e.v.Tag == "!!null" {
		p.errorf(e.v, "%s: want a single value, not %s", e.k.Value, kindNameOrEmpty(e.v))
		return "", false
	}
	return strings.TrimSpace(e.v.Value), true
}

func kindNameOrEmpty(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return "nothing"
	}
	return kindName(n)
}

func (p *parser) integer(e kv, lo, hi int) (int, bool) {
	s, ok := p.str(e)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		p.errorf(e.v, "%s: %q is not a whole number", e.k.Value, s)
		return 0, false
	}
	if n < lo || n > hi {
		p.errorf(e.v, "%s: %d is out of range %d to %d", e.k.Value, n, lo, hi)
		return 0, false
	}
	return n, true
}

func (p *parser) boolean(e kv) (bool, bool) {
	s, ok := p.str(e)
	if !ok {
		return false, false
	}
	switch strings.ToLower(s) {
	case "true", "yes", "on":
		return true, true
	case "false", "no", "off":
		return false, true
	}
	p.errorf(e.v, "%s: %q: use true or false", e.k.Value, s)
	return false, false
}

func (p *parser) float(e kv) (float64, bool) {
	s, ok := p.str(e)
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		p.errorf(e.v, "%s: %q: want a positive number such as 2 or 2.5", e.k.Value, s)
		return 0, false
	}
	return f, true
}

// duration accepts Go durations (90s, 5m, 1h30m) and a bare number of seconds.
func (p *parser) duration(e kv) (time.Duration, bool) {
	s, ok := p.str(e)
	if !ok {
		return 0, false
	}
	if n, err := strconv.Atoi(s); err == nil && n > 0 {
		return time.Duration(n) * time.Second, true
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		p.errorf(e.v, "%s: %q: want a positive duration such as 30s, 5m or 1h30m", e.k.Value, s)
		return 0, false
	}
	return d, true
}

// strs accepts a list of values or a single value.
func (p *parser) strs(e kv) ([]string, bool) {
	if e.v.Kind == yaml.ScalarNode && e.v.Tag != "!!null" {
		return []string{strings.TrimSpace(e.v.Value)}, true
	}
	if e.v.Kind != yaml.SequenceNode {
		p.errorf(e.v, "%s: want a list of values, not %s", e.k.Value, kindNameOrEmpty(e.v))
		return nil, false
	}
	var out []string
	for _, it := range e.v.Content {
		if it.Kind != yaml.ScalarNode || it.Tag == "!!null" || strings.TrimSpace(it.Value) == "" {
			p.errorf(it, "%s: every entry must be a single non-empty value", e.k.Value)
			return nil, false
		}
		out = append(out, strings.TrimSpace(it.Value))
	}
	return out, true
}

func (p *parser) schedule(e kv, what string) (Schedule, bool) {
	s, ok := p.str(e)
	if !ok {
		return Schedule{}, false
	}
	ps, err := schedule.Parse(s, p.loc)
	if err != nil {
		p.errorf(e.v, "%s: %v", what, err)
		return Schedule{}, false
	}
	return Schedule{Spec: s, Line: e.v.Line, parsed: ps}, true
}

// secretRef accepts only file:PATH and env:NAME, so no secret is written in the file.
func (p *parser) secretRef(e kv) (string, bool) {
	s, ok := p.str(e)
	if !ok {
		return "", false
	}
	if rest, ok := strings.CutPrefix(s, "file:"); ok && rest != "" {
		return s, true
	}
	if rest, ok := strings.CutPrefix(s, "env:"); ok && rest != "" {
		return s, true
	}
	// The value is never echoed: it may be the secret itself.
	p.errorf(e.v, "%s: write a reference, file:/etc/autosnap/NAME.secret (mode 0600) or env:VARIABLE, not the secret itself", e.k.Value)
	return "", false
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)

func (p *parser) connections(e kv) []Connection {
	if e.v.Kind != yaml.SequenceNode {
		p.errorf(e.v, "connections: want a list of connections (- name: …), not %s", kindNameOrEmpty(e.v))
		return nil
	}
	var out []Connection
	first := map[string]int{}
	for _, n := range e.v.Content {
		m := p.fields(n, "a connection", "name", "host", "user", "password", "secret", "api_token", "fingerprint", "ca_file", "insecure")
		if m == nil {
			continue
		}
		c := Connection{Line: n.Line}
		if kv, ok := m["name"]; ok {
			if s, ok := p.str(kv); ok {
				switch {
				case !nameRE.MatchString(s):
					p.errorf(kv.v, "connection name %q: use letters, digits, '-' and '_'", s)
				case first[s] != 0:
					p.errorf(kv.v, "connection %q is defined twice (first on line %d)", s, first[s])
				default:
					first[s] = n.Line
					c.Name = s
				}
			}
		} else {
			p.errorf(n, "a connection needs a name:")
		}
		if kv, ok := m["host"]; ok {
			if s, ok := p.str(kv); ok {
				if s == "" {
					p.errorf(kv.v, "host is empty: use e.g. qemu:///system or pve.example.com")
				}
				c.Host = s
			}
		} else {
			p.errorf(n, "connection %q needs a host: (e.g. qemu:///system or pve.example.com)", c.Name)
		}
		if kv, ok := m["user"]; ok {
			c.User, _ = p.str(kv)
		}
		if kv, ok := m["password"]; ok {
			c.Secret, _ = p.secretRef(kv)
		}
		if kv, ok := m["secret"]; ok {
			if _, both := m["password"]; both {
				p.errorf(kv.k, "connection %q: secret: is another name for password:; give one of them", c.Name)
			} else {
				c.Secret, _ = p.secretRef(kv)
			}
		}
		if kv, ok := m["api_token"]; ok {
			c.APIToken, _ = p.secretRef(kv)
		}
		if kv, ok := m["fingerprint"]; ok {
			c.Fingerprint, _ = p.str(kv)
		}
		if kv, ok := m["ca_file"]; ok {
			c.CAFile, _ = p.str(kv)
		}
		if kv, ok := m["insecure"]; ok {
			c.Insecure, _ = p.boolean(kv)
		}
		out = append(out, c)
	}
	return out
}

func (p *parser) policies(e kv, cfg *Config) []Policy {
	if e.v.Kind != yaml.SequenceNode {
		p.errorf(e.v, "policies: want a list of policies (- name: …), not %s", kindNameOrEmpty(e.v))
		return nil
	}
	if len(e.v.Content) == 0 {
		p.errorf(e.v, "policies: the list is empty: add at least one policy")
	}
	var out []Policy
	first := map[string]int{}
	for _, n := range e.v.Content {
		m := p.fields(n, "a policy", "name", "host", "vmid", "tags", "max_parallel", "timeout", "script", "snapshot", "backup")
		if m == nil {
			continue
		}
		pol := Policy{Line: n.Line, Host: driver.DefaultHost, MaxParallel: DefaultMaxParallel, Timeout: DefaultTimeout}
		if kv, ok := m["name"]; ok {
			if s, ok := p.str(kv); ok {
				switch {
				case !nameRE.MatchString(s):
					p.errorf(kv.v, "policy name %q: use letters, digits, '-' and '_' (it is the default snapshot label)", s)
				case first[s] != 0:
					p.errorf(kv.v, "duplicate policy name %q (first on line %d): every policy needs its own name", s, first[s])
				default:
					first[s] = n.Line
				}
				pol.Name = s
			}
		} else {
			p.errorf(n, "a policy needs a name:")
		}
		what := fmt.Sprintf("policy %q", pol.Name)
		if kv, ok := m["host"]; ok {
			if s, ok := p.str(kv); ok {
				if s == "" {
					p.errorf(kv.v, "%s: host is empty: name a connection or use e.g. qemu:///system", what)
				} else {
					pol.Host = s
				}
			}
		}
		if kv, ok := m["vmid"]; ok {
			if s, ok := p.str(kv); ok {
				if _, err := selector.Parse(s); err != nil {
					p.errorf(kv.v, "%s: vmid: %v", what, err)
				} else {
					pol.VMID = s
				}
			}
		} else {
			p.errorf(n, "%s needs a vmid: saying which guests, e.g. vmid: \"@all\" or vmid: \"web%%,-web-test\"", what)
		}
		if kv, ok := m["tags"]; ok {
			pol.Tags, _ = p.strs(kv)
		}
		if kv, ok := m["max_parallel"]; ok {
			if v, ok := p.integer(kv, 1, 256); ok {
				pol.MaxParallel = v
			}
		}
		if kv, ok := m["timeout"]; ok {
			if d, ok := p.duration(kv); ok {
				pol.Timeout = d
			}
		}
		if kv, ok := m["script"]; ok {
			if s, ok := p.str(kv); ok {
				if !filepath.IsAbs(s) {
					p.errorf(kv.v, "%s: script %q: use an absolute path", what, s)
				}
				pol.Script = s
			}
		}
		if kv, ok := m["snapshot"]; ok {
			pol.Snapshot = p.snapshot(kv, pol.Name)
		}
		if kv, ok := m["backup"]; ok {
			pol.Backup = p.backup(kv, what)
		}
		if _, s := m["snapshot"]; !s {
			if _, b := m["backup"]; !b {
				p.errorf(n, "%s neither snapshots nor backs up: add a snapshot: or backup: section", what)
			}
		}
		out = append(out, pol)
	}
	return out
}

var keepKeys = []string{"keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within"}

// keep reads the keep_* keys of m into a GFS. A count is a whole number or
// "unlimited"; keep_within a span such as 7d or 1y6m.
func (p *parser) keep(m map[string]kv) (retention.GFS, bool) {
	g := retention.GFS{Location: p.loc}
	before := len(p.errs)
	counts := map[string]*int{"keep_last": &g.Last, "keep_hourly": &g.Hourly, "keep_daily": &g.Daily,
		"keep_weekly": &g.Weekly, "keep_monthly": &g.Monthly, "keep_yearly": &g.Yearly}
	for key, dst := range counts {
		e, ok := m[key]
		if !ok {
			continue
		}
		s, ok := p.str(e)
		if !ok {
			continue
		}
		if strings.EqualFold(s, "unlimited") || strings.EqualFold(s, "all") {
			*dst = -1
			continue
		}
		if v, ok := p.integer(e, 0, 1<<30); ok {
			*dst = v
		}
	}
	if e, ok := m["keep_within"]; ok {
		if s, ok := p.str(e); ok {
			sp, err := retention.ParseSpan(s)
			if err != nil {
				p.errorf(e.v, "keep_within: %v", err)
			} else if sp.Years < 0 || sp.Months < 0 || sp.Days < 0 || sp.Hours < 0 {
				p.errorf(e.v, "keep_within %q is negative", s)
			} else {
				g.Within = sp
			}
		}
	}
	return g, len(p.errs) == before
}

// firstKeep is the first keep_* key of m in the file, nil when there is none.
func firstKeep(m map[string]kv) *yaml.Node {
	var first *yaml.Node
	for _, k := range keepKeys {
		if e, ok := m[k]; ok && (first == nil || e.k.Line < first.Line || e.k.Line == first.Line && e.k.Column < first.Column) {
			first = e.k
		}
	}
	return first
}

func (p *parser) quiesce(e kv) (string, bool) {
	s, ok := p.str(e)
	if !ok {
		return "", false
	}
	switch strings.ToLower(s) {
	case "auto":
		return "auto", true
	case "on", "true", "yes":
		return "on", true
	case "off", "false", "no":
		return "off", true
	}
	p.errorf(e.v, "quiesce %q: use auto, on or off", s)
	return "", false
}

func (p *parser) snapshot(e kv, policy string) *SnapshotRule {
	what := fmt.Sprintf("policy %q: snapshot", policy)
	m := p.fields(e.v, what, append([]string{"schedule", "label", "quiesce", "state", "only_running", "max_chain_depth"}, keepKeys...)...)
	if m == nil {
		return nil
	}
	r := &SnapshotRule{Label: policy, Quiesce: "auto"}
	if kv, ok := m["schedule"]; ok {
		r.Schedule, _ = p.schedule(kv, what)
	} else {
		p.errorf(e.k, "%s needs a schedule: (a cron expression such as \"0 * * * *\" or \"@every 1h\")", what)
	}
	if kv, ok := m["label"]; ok {
		if s, ok := p.str(kv); ok {
			if err := naming.Validate(s, p.tsFormat); err != nil {
				p.errorf(kv.v, "%s: label: %v", what, err)
			}
			r.Label = s
		}
	} else if policy != "" && nameRE.MatchString(policy) {
		if err := naming.Validate(policy, p.tsFormat); err != nil {
			p.errorf(e.k, "%s: the policy name is the default label, but %v: set label:", what, err)
		}
	}
	keep, ok := p.keep(m)
	r.Keep = keep
	if r.Keep.IsEmpty() && ok {
		if k := firstKeep(m); k != nil {
			p.errorf(k, "%s: the retention keeps nothing (every keep_* is 0): set e.g. keep_last: 3 or keep_daily: 7", what)
		} else {
			p.errorf(e.k, "%s: no retention: the retention keeps nothing; set e.g. keep_last: 3 or keep_daily: 7", what)
		}
	}
	if kv, ok := m["quiesce"]; ok {
		if q, ok := p.quiesce(kv); ok {
			r.Quiesce = q
		}
	}
	if kv, ok := m["state"]; ok {
		r.State, _ = p.boolean(kv)
	}
	if kv, ok := m["only_running"]; ok {
		r.OnlyRunning, _ = p.boolean(kv)
	}
	if kv, ok := m["max_chain_depth"]; ok {
		r.MaxChainDepth, _ = p.integer(kv, 0, 1<<20)
	}
	return r
}

// Levels a backup can take.
var levels = []string{"full", "inc", "diff", "copy"}

func (p *parser) level(e kv, allowAuto bool) (string, bool) {
	s, ok := p.str(e)
	if !ok {
		return "", false
	}
	l := strings.ToLower(s)
	if l == "auto" && allowAuto {
		return l, true
	}
	for _, v := range levels {
		if l == v {
			return l, true
		}
	}
	if allowAuto {
		p.errorf(e.v, "level %q: use auto, full, inc, diff or copy", s)
	} else {
		p.errorf(e.v, "level %q: use full, inc, diff or copy", s)
	}
	return "", false
}

func (p *parser) backup(e kv, policy string) *BackupRule {
	what := policy + ": backup"
	m := p.fields(e.v, what, "schedule", "target", "level", "levels", "quiesce", "compress", "include_disks", "exclude_disks", "prune")
	if m == nil {
		return nil
	}
	r := &BackupRule{Default: "auto", Quiesce: "auto"}
	if kv, ok := m["schedule"]; ok {
		r.Schedule, _ = p.schedule(kv, what)
	} else {
		p.errorf(e.k, "%s needs a schedule: (a cron expression such as \"0 2 * * *\" or \"@every 24h\")", what)
	}
	if kv, ok := m["target"]; ok {
		if s, ok := p.str(kv); ok {
			if s == "" {
				p.errorf(kv.v, "%s: target is empty: name the backup repository, e.g. /srv/backup", what)
			}
			r.Target = s
		}
	} else {
		p.errorf(e.k, "%s needs a target: (the backup repository, e.g. /srv/backup)", what)
	}
	if kv, ok := m["level"]; ok {
		if l, ok := p.level(kv, true); ok {
			r.Default = l
		}
	}
	if kv, ok := m["levels"]; ok {
		r.Levels = p.levelRules(kv, what)
	}
	if kv, ok := m["quiesce"]; ok {
		if q, ok := p.quiesce(kv); ok {
			r.Quiesce = q
		}
	}
	if kv, ok := m["compress"]; ok {
		r.Compress, _ = p.boolean(kv)
	}
	if kv, ok := m["include_disks"]; ok {
		r.IncludeDisks, _ = p.strs(kv)
	}
	if kv, ok := m["exclude_disks"]; ok {
		r.ExcludeDisks, _ = p.strs(kv)
	}
	if len(r.IncludeDisks) > 0 && len(r.ExcludeDisks) > 0 {
		p.errorf(m["exclude_disks"].k, "%s: give include_disks or exclude_disks, not both", what)
	}
	if kv, ok := m["prune"]; ok {
		pm := p.fields(kv.v, what+": prune", keepKeys...)
		if pm != nil {
			prune, ok := p.keep(pm)
			r.Prune = prune
			if r.Prune.IsEmpty() && ok {
				at := kv.k
				if k := firstKeep(pm); k != nil {
					at = k
				}
				p.errorf(at, "%s: prune: the retention keeps nothing (every keep_* is 0): set e.g. keep_daily: 7, or remove prune: to keep every backup", what)
			}
		}
	}
	return r
}

func (p *parser) levelRules(e kv, what string) []LevelRule {
	if e.v.Kind != yaml.SequenceNode {
		p.errorf(e.v, "%s: levels: want a list such as [{level: full, schedule: \"0 3 * * 0\"}], not %s", what, kindNameOrEmpty(e.v))
		return nil
	}
	var out []LevelRule
	for _, n := range e.v.Content {
		m := p.fields(n, what+": a levels entry", "level", "schedule")
		if m == nil {
			continue
		}
		var lr LevelRule
		lkv, lok := m["level"]
		skv, sok := m["schedule"]
		if !lok || !sok {
			p.errorf(n, "%s: a levels entry needs level: and schedule:, e.g. {level: full, schedule: \"0 3 * * 0\"}", what)
			continue
		}
		l, ok1 := p.level(lkv, false)
		s, ok2 := p.schedule(skv, what+": levels")
		if ok1 && ok2 {
			lr.Level, lr.Schedule = l, s
			out = append(out, lr)
		}
	}
	return out
}

func (p *parser) monitor(e kv, mon *Monitor) {
	m := p.fields(e.v, "monitor", "warning", "critical", "max_chain_depth")
	if m == nil {
		return
	}
	if kv, ok := m["warning"]; ok {
		if f, ok := p.float(kv); ok {
			mon.Warning = f
		}
	}
	if kv, ok := m["critical"]; ok {
		if f, ok := p.float(kv); ok {
			mon.Critical = f
		}
	}
	if mon.Critical < mon.Warning {
		n := e.k
		if kv, ok := m["critical"]; ok {
			n = kv.v
		}
		p.errorf(n, "monitor: critical (%g) is below warning (%g): critical must be the larger multiple of the cadence", mon.Critical, mon.Warning)
	}
	if kv, ok := m["max_chain_depth"]; ok {
		mon.MaxChainDepth, _ = p.integer(kv, 0, 1<<20)
	}
}

func (p *parser) notify(e kv, n *Notify) {
	m := p.fields(e.v, "notify", "webhook", "secret")
	if m == nil {
		return
	}
	if kv, ok := m["webhook"]; ok {
		if s, ok := p.str(kv); ok {
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				p.errorf(kv.v, "notify: webhook %q: want an http:// or https:// URL", s)
			} else {
				n.Webhook = s
			}
		}
	} else {
		p.errorf(e.k, "notify: needs a webhook: URL")
	}
	if kv, ok := m["secret"]; ok {
		n.Secret, _ = p.secretRef(kv)
	}
}

// ResolveSecret returns what a `file:` or `env:` reference stands for. file: is read
// as --password file: is (cv4pve-autosnap's encrypted password files work). Errors
// name the reference, never the secret.
func ResolveSecret(ref string) (string, error) {
	switch {
	case ref == "":
		return "", nil
	case strings.HasPrefix(ref, "env:"):
		name := strings.TrimPrefix(ref, "env:")
		v, ok := os.LookupEnv(name)
		if !ok {
			return "", fmt.Errorf("secret %s: the environment variable %s is not set", ref, name)
		}
		return v, nil
	case strings.HasPrefix(ref, "file:"):
		return secret.Resolve(ref)
	}
	return "", errors.New("secret: not a file: or env: reference; a literal secret is refused")
}
