package policy

import (
	"strconv"
	"strings"
	"testing"
)

const hashAlice = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"

func TestParseDashboard(t *testing.T) {
	cfg, err := Parse([]byte(minimal+`dashboard:
  tls_cert: /etc/autosnap/d.crt
  tls_key: /etc/autosnap/d.key
  token: file:/etc/autosnap/dashboard.token
  users:
    alice: "`+hashAlice+`"
`), "d.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Dashboard
	if d.TLSCert != "/etc/autosnap/d.crt" || d.TLSKey != "/etc/autosnap/d.key" || d.Token != "file:/etc/autosnap/dashboard.token" || d.Users["alice"] != hashAlice || len(d.Users) != 1 {
		t.Errorf("dashboard = %+v", d)
	}
}

func TestParseDashboardErrors(t *testing.T) {
	for _, c := range []struct {
		yaml, want string
		line       int
	}{
		{"dashboard:\n  token: hunter2\n", "not the secret itself", 9},
		{"dashboard:\n  users:\n    bob: hunter2\n", `user "bob": the value is not a bcrypt hash`, 10},
		{"dashboard:\n  tls_cert: /a.crt\n", "tls_cert and tls_key go together", 8},
		{"dashboard:\n  tls_cert: a.crt\n  tls_key: /a.key\n", "use an absolute path", 9},
		{"dashboard:\n  listen: 1\n", `unknown key "listen" in dashboard`, 9},
		{"dashboard:\n  users: [alice]\n", "want a mapping of user names", 9},
	} {
		_, err := Parse([]byte(minimal+c.yaml), "d.yaml")
		if err == nil {
			t.Errorf("%q: accepted", c.yaml)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "d.yaml:"+strconv.Itoa(c.line)+":") {
			t.Errorf("%q: error %q, want %q on line %d", c.yaml, err, c.want, c.line)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: the error echoes the secret: %v", c.yaml, err)
		}
	}
}
