package pveemu

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// makeClusterCA creates the cluster CA (like pve-root-ca.pem) and, for every node, a
// certificate it signs (like pve-ssl.pem): CN the node's FQDN, names the node's short
// and .local names, localhost and the loopback addresses, as pvecm updatecerts makes
// them.
func (c *Cluster) makeClusterCA() {
	caKey := mustKey()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Proxmox Virtual Environment", OrganizationalUnit: []string{"pveemu"}, Organization: []string{"PVE Cluster Manager CA"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		panic(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		panic(err)
	}
	c.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	c.nodeCerts = map[string]tls.Certificate{}
	for _, n := range c.order {
		key := mustKey()
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: n + ".local", Organization: []string{"PVE Cluster Node"}, OrganizationalUnit: []string{"PVE Cluster Node"}},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(2 * 365 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:     []string{n, n + ".local", "localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		c.nodeCerts[n] = tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key, Leaf: leaf}
	}
}

func mustKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func serial() *big.Int {
	s, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return s
}

// certOf is the certificate the node serves.
func (c *Cluster) certOf(node string) tls.Certificate {
	if nc, ok := c.nodeCerts[node]; ok {
		return nc
	}
	return c.cert
}

// CACertPEM is the cluster CA's certificate in PEM, as in /etc/pve/pve-root-ca.pem;
// nil without Options.ClusterCA.
func (c *Cluster) CACertPEM() []byte { return c.caPEM }

// NodeFingerprint is the SHA-256 fingerprint, "AA:BB:…", of the certificate the node
// serves.
func (c *Cluster) NodeFingerprint(node string) string {
	sum := sha256.Sum256(c.certOf(node).Certificate[0])
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}
