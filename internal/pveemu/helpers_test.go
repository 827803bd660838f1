package pveemu

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

const testSecret = "5f2d6a5e-3c1b-4b7e-9d3a-0c8f1e2d3b4a"

// testCluster builds a three-node cluster with a representative set of guests.
func testCluster(t *testing.T, mod func(*Options)) *Cluster {
	t.Helper()
	opts := Options{
		Nodes:            []string{"pve1", "pve2", "pve3"},
		TaskDuration:     80 * time.Millisecond,
		Users:            map[string]string{"root@pam": "secret", "audit@pve": "audit"},
		Tokens:           map[string]string{"root@pam!autosnap": testSecret},
		AuthFailureDelay: -1,
	}
	if mod != nil {
		mod(&opts)
	}
	c := New(opts)
	t.Cleanup(c.Close)
	c.AddStorage("pve1", "local-lvm", "lvmthin", 500<<30, 100<<30, true, "images,rootdir")
	c.AddStorage("pve1", "local", "dir", 100<<30, 10<<30, true, "iso,vztmpl,backup")
	c.AddStorage("pve1", "thick", "lvm", 100<<30, 10<<30, false, "images,rootdir")
	c.AddStorage("pve2", "local-zfs", "zfspool", 800<<30, 300<<30, true, "images,rootdir")
	c.AddGuest(Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running",
		Tags: []string{"Prod", "web"}, Agent: "1", AgentRunning: true,
		Disks: map[string]string{"scsi0": "local-lvm:vm-100-disk-0,iothread=1,size=32G", "ide2": "none,media=cdrom"}})
	c.AddGuest(Guest{Node: "pve1", VMID: 101, Name: "ct1", Kind: "lxc", Status: "running",
		Disks: map[string]string{"rootfs": "local-lvm:subvol-101-disk-0,size=8G"}})
	c.AddGuest(Guest{Node: "pve1", VMID: 102, Name: "db1", Kind: "qemu", Status: "stopped",
		Disks: map[string]string{"scsi0": "thick:vm-102-disk-0,size=16G"}})
	c.AddGuest(Guest{Node: "pve2", VMID: 200, Name: "zfsvm", Kind: "qemu", Status: "running",
		Disks: map[string]string{"virtio0": "local-zfs:vm-200-disk-0,size=8G"}})
	c.AddGuest(Guest{Node: "pve1", VMID: 103, Name: "bind", Kind: "lxc", Status: "running",
		Disks: map[string]string{"rootfs": "local-lvm:subvol-103-disk-0,size=8G", "mp0": "/mnt/host,mp=/data"}})
	c.AddGuest(Guest{Node: "pve1", VMID: 900, Name: "tmpl", Kind: "qemu", Template: true})
	return c
}

type client struct {
	t      *testing.T
	base   string
	hc     *http.Client
	token  string
	ticket string
	csrf   string
	json   bool
}

type resp struct {
	code   int
	status string // "500 snapshot 'x' does not exist"
	body   map[string]any
	raw    []byte
	hdr    http.Header
	close  bool
}

func (r resp) data() any { return r.body["data"] }

func (r resp) str() string { s, _ := r.body["data"].(string); return s }

func (r resp) list() []map[string]any {
	arr, _ := r.body["data"].([]any)
	out := make([]map[string]any, 0, len(arr))
	for _, e := range arr {
		out = append(out, e.(map[string]any))
	}
	return out
}

func (r resp) obj() map[string]any { m, _ := r.body["data"].(map[string]any); return m }

func newClient(t *testing.T, c *Cluster, nodeName string) *client {
	t.Helper()
	addr, err := c.ListenNode(nodeName)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CertPool(), ServerName: "localhost"}}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{t: t, base: "https://" + addr + "/api2/json", hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

func (cl *client) withToken() *client {
	n := *cl
	n.token = "root@pam!autosnap=" + testSecret
	return &n
}

func (cl *client) login(user, pass string) resp {
	cl.t.Helper()
	r := cl.do("POST", "/access/ticket", map[string]any{"username": user, "password": pass})
	if r.code == 200 {
		cl.ticket = r.obj()["ticket"].(string)
		cl.csrf = r.obj()["CSRFPreventionToken"].(string)
	}
	return r
}

// do sends params as a form body (POST/PUT) or query string (GET/DELETE), or as JSON when
// cl.json is set.
func (cl *client) do(method, path string, params map[string]any) resp {
	cl.t.Helper()
	var body io.Reader
	u := cl.base + path
	ct := ""
	if len(params) > 0 {
		if method == "GET" || method == "DELETE" {
			q := url.Values{}
			for k, v := range params {
				q.Set(k, toString(v))
			}
			u += "?" + q.Encode()
		} else if cl.json {
			b, _ := json.Marshal(params)
			body, ct = bytes.NewReader(b), "application/json"
		} else {
			q := url.Values{}
			for k, v := range params {
				q.Set(k, toString(v))
			}
			body, ct = strings.NewReader(q.Encode()), "application/x-www-form-urlencoded"
		}
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		cl.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if cl.token != "" {
		req.Header.Set("Authorization", "PVEAPIToken="+cl.token)
	}
	if cl.ticket != "" {
		req.Header.Set("Cookie", "PVEAuthCookie="+url.QueryEscape(cl.ticket))
		if cl.csrf != "" {
			req.Header.Set("CSRFPreventionToken", cl.csrf)
		}
	}
	res, err := cl.hc.Do(req)
	if err != nil {
		cl.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := resp{code: res.StatusCode, status: res.Status, raw: raw, hdr: res.Header, close: res.Close}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			cl.t.Fatalf("%s %s: bad JSON %q: %v", method, path, raw, err)
		}
	}
	return r
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int:
		return strconv.Itoa(x)
	case bool:
		if x {
			return "1"
		}
		return "0"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// wait polls a task until it stops, as clients do, and returns the final status object.
func (cl *client) wait(node, upid string) map[string]any {
	cl.t.Helper()
	if upid == "" {
		cl.t.Fatalf("no UPID to wait for")
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r := cl.do("GET", "/nodes/"+node+"/tasks/"+url.PathEscape(upid)+"/status", nil)
		if r.code != 200 {
			cl.t.Fatalf("task status: %s %s", r.status, r.raw)
		}
		if r.obj()["status"] == "stopped" {
			return r.obj()
		}
		time.Sleep(10 * time.Millisecond)
	}
	cl.t.Fatalf("task %s did not finish", upid)
	return nil
}

func (cl *client) expect(r resp, code int, status string) {
	cl.t.Helper()
	if r.code != code || (status != "" && r.status != status) {
		cl.t.Fatalf("got %q (%s), want %d %q", r.status, r.raw, code, status)
	}
}

func itoaT(i int) string { return strconv.Itoa(i) }

// doBody sends a raw JSON body with any method.
func (cl *client) doBody(method, path, body string) resp {
	cl.t.Helper()
	req, _ := http.NewRequest(method, cl.base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if cl.token != "" {
		req.Header.Set("Authorization", "PVEAPIToken="+cl.token)
	}
	res, err := cl.hc.Do(req)
	if err != nil {
		cl.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := resp{code: res.StatusCode, status: res.Status, raw: raw, hdr: res.Header, close: res.Close}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &r.body)
	}
	return r
}

func (cl *client) doRawCookie(method, path string) resp {
	cl.t.Helper()
	req, _ := http.NewRequest(method, cl.base+path, nil)
	req.Header.Set("Cookie", "PVEAuthCookie="+cl.ticket)
	return cl.send(req)
}

func (cl *client) doAuthHeader(method, path, auth string) resp {
	cl.t.Helper()
	req, _ := http.NewRequest(method, cl.base+path, nil)
	req.Header.Set("Authorization", auth)
	return cl.send(req)
}

func (cl *client) send(req *http.Request) resp {
	cl.t.Helper()
	res, err := cl.hc.Do(req)
	if err != nil {
		cl.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := resp{code: res.StatusCode, status: res.Status, raw: raw, hdr: res.Header, close: res.Close}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &r.body)
	}
	return r
}

func httptestGet(t *testing.T, c *Cluster, path, auth string) int {
	t.Helper()
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	req.Header.Set("Authorization", auth)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}
