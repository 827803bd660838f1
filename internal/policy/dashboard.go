package policy

import (
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Dashboard is the policy file's `dashboard:` section: what `autosnap daemon
// --listen` needs to serve the dashboard off loopback (see docs/dashboard.md).
type Dashboard struct {
	// TLSCert and TLSKey are PEM files; with them the listener serves HTTPS.
	TLSCert, TLSKey string
	// Token is a `file:` or `env:` reference to the API bearer token.
	Token string
	// Users maps user names to bcrypt password hashes for the login form.
	Users map[string]string
}

func (p *parser) dashboard(e kv, d *Dashboard) {
	m := p.fields(e.v, "dashboard", "tls_cert", "tls_key", "token", "users")
	if m == nil {
		return
	}
	for key, dst := range map[string]*string{"tls_cert": &d.TLSCert, "tls_key": &d.TLSKey} {
		if kv, ok := m[key]; ok {
			if s, ok := p.str(kv); ok {
				if !filepath.IsAbs(s) {
					p.errorf(kv.v, "dashboard: %s %q: use an absolute path", key, s)
				} else {
					*dst = filepath.Clean(s)
				}
			}
		}
	}
	_, hasCert := m["tls_cert"]
	_, hasKey := m["tls_key"]
	if hasCert != hasKey {
		p.errorf(e.k, "dashboard: tls_cert and tls_key go together: give both or neither")
	}
	if kv, ok := m["token"]; ok {
		d.Token, _ = p.secretRef(kv)
	}
	if kv, ok := m["users"]; ok {
		if kv.v.Kind != yaml.MappingNode {
			p.errorf(kv.v, "dashboard: users: want a mapping of user names to bcrypt hashes (alice: \"$2y$10$…\")")
			return
		}
		d.Users = map[string]string{}
		for i := 0; i+1 < len(kv.v.Content); i += 2 {
			k, v := kv.v.Content[i], kv.v.Content[i+1]
			if _, dup := d.Users[k.Value]; dup {
				p.errorf(k, "dashboard: user %q given twice", k.Value)
				continue
			}
			// The value is never echoed: it may be a password written by mistake.
			if v.Kind != yaml.ScalarNode || !strings.HasPrefix(v.Value, "$2") || len(v.Value) != 60 {
				p.errorf(v, "dashboard: user %q: the value is not a bcrypt hash: write the output of `htpasswd -nbBC 10 USER PASSWORD` (after the colon) or `mkpasswd -m bcrypt`", k.Value)
				continue
			}
			d.Users[k.Value] = v.Value
		}
	}
}
