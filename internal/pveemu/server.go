package pveemu

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"time"
)

func (c *Cluster) makeCert() {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	dns := []string{"localhost"}
	for _, n := range c.order {
		dns = append(dns, n, n+".local")
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         c.order[0] + ".local",
			Organization:       []string{"PVE Cluster Node"},
			OrganizationalUnit: []string{"PVE Cluster Node"},
		},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(2 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              dns,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	c.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}
	c.certPool = x509.NewCertPool()
	c.certPool.AddCert(cert)
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	c.fingerprint = strings.Join(parts, ":")
}

// Fingerprint is the SHA-256 fingerprint of the (shared, self-signed) certificate, in the
// "AA:BB:…" form PVE shows (and /nodes reports as ssl_fingerprint).
func (c *Cluster) Fingerprint() string { return c.fingerprint }

// CertPool contains the self-signed certificate, for clients that verify TLS.
func (c *Cluster) CertPool() *x509.CertPool { return c.certPool }

// Certificate returns the TLS certificate every node endpoint serves.
func (c *Cluster) Certificate() tls.Certificate { return c.cert }

// Handler serves the API as the first node would, without TLS (for httptest).
func (c *Cluster) Handler() http.Handler { return c.NodeHandler(c.order[0]) }

// NodeHandler serves the API as the given node's pveproxy would.
func (c *Cluster) NodeHandler(nodeName string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.serve(nodeName, w, r)
	})
}

// ListenNode starts the node's HTTPS endpoint on 127.0.0.1 (a random port, or the port
// it had before CloseNode) and returns "127.0.0.1:port".
func (c *Cluster) ListenNode(nodeName string) (string, error) {
	c.mu.Lock()
	n := c.nodes[nodeName]
	addr := "127.0.0.1:0"
	if n != nil && n.addr != "" {
		addr = n.addr
	}
	c.mu.Unlock()
	return c.ListenNodeOn(nodeName, addr)
}

// ListenNodeOn starts the node's HTTPS endpoint on addr (e.g. "127.0.0.1:8006").
func (c *Cluster) ListenNodeOn(nodeName, addr string) (string, error) {
	c.mu.Lock()
	n := c.nodes[nodeName]
	if n == nil {
		c.mu.Unlock()
		return "", fmt.Errorf("pveemu: unknown node %q", nodeName)
	}
	if n.up {
		a := n.addr
		c.mu.Unlock()
		return a, nil
	}
	c.mu.Unlock()

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	tcfg := &tls.Config{
		Certificates: []tls.Certificate{c.certOf(nodeName)},
		NextProtos:   []string{"http/1.1"}, // pveproxy speaks HTTP/1.1 only
		MinVersion:   tls.VersionTLS12,
	}
	srv := &http.Server{
		Handler:           c.NodeHandler(nodeName),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          discardLog,
	}
	srv.ConnState = func(conn net.Conn, st http.ConnState) {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch st {
		case http.StateNew:
			n.conns[conn] = struct{}{}
		case http.StateClosed, http.StateHijacked:
			delete(n.conns, conn)
		}
	}
	c.mu.Lock()
	n.srv = srv
	n.addr = ln.Addr().String()
	n.up = true
	n.killed = false
	c.mu.Unlock()
	go srv.Serve(tls.NewListener(ln, tcfg))
	return ln.Addr().String(), nil
}

// CloseNode kills the node's API endpoint: the listener closes and open connections are
// reset (RST), so clients see "connection refused"/"connection reset". Other nodes then
// answer /nodes/{node}/… with "595 Connection refused". ListenNode restarts it on the
// same address.
func (c *Cluster) CloseNode(nodeName string) {
	c.mu.Lock()
	n := c.nodes[nodeName]
	if n == nil || n.srv == nil {
		c.mu.Unlock()
		return
	}
	srv := n.srv
	n.srv = nil
	n.up = false
	n.killed = true
	conns := make([]net.Conn, 0, len(n.conns))
	for conn := range n.conns {
		conns = append(conns, conn)
	}
	n.conns = map[net.Conn]struct{}{}
	c.mu.Unlock()
	for _, conn := range conns {
		raw := conn
		if tc, ok := conn.(*tls.Conn); ok {
			raw = tc.NetConn()
		}
		if tcp, ok := raw.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		_ = raw.Close()
	}
	_ = srv.Close()
}

// NodeAddr returns the node's listening address ("" if it is not listening).
func (c *Cluster) NodeAddr(nodeName string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[nodeName]; n != nil && n.up {
		return n.addr
	}
	return ""
}

// Nodes returns the node names in order.
func (c *Cluster) Nodes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.order...)
}
