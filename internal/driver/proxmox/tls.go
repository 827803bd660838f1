package proxmox

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// tlsConfig is the TLS configuration of every request. Verification is on by default,
// against the system's roots plus the CAs of caFile (the cluster CA,
// /etc/pve/pve-root-ca.pem, signs every node's certificate, so one file covers every
// node, and names are still checked). fingerprint pins node certificates instead: a
// certificate with one of its SHA-256 fingerprints is accepted whoever signed it and
// whatever names it has; with caFile too, one that is not pinned must verify against
// the roots. insecure turns verification off.
func tlsConfig(fingerprint, caFile string, insecure bool) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	var roots *x509.CertPool
	if caFile != "" {
		pemData, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w (copy the cluster CA from a node: /etc/pve/pve-root-ca.pem)", err)
		}
		if roots, err = x509.SystemCertPool(); err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("--ca-file %s holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the cluster CA, /etc/pve/pve-root-ca.pem", caFile)
		}
		tc.RootCAs = roots
	}
	switch {
	case fingerprint != "":
		pins, err := parseFingerprints(fingerprint)
		if err != nil {
			return nil, err
		}
		// The pin replaces chain and name verification: Proxmox VE nodes use
		// self-signed certificates whose names rarely match the address used.
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if slices.Contains(pins, got) {
				return nil
			}
			if roots != nil {
				inter := x509.NewCertPool()
				for _, c := range cs.PeerCertificates[1:] {
					inter.AddCert(c)
				}
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: cs.ServerName})
				if err == nil {
					return nil
				}
			}
			return &fingerprintMismatch{got: formatFingerprint(got[:])}
		}
	case insecure:
		tc.InsecureSkipVerify = true
	}
	return tc, nil
}

// fingerprintMismatch is a certificate that matches none of --fingerprint.
type fingerprintMismatch struct{ got string }

func (e *fingerprintMismatch) Error() string {
	return "certificate fingerprint " + e.got + " does not match --fingerprint"
}

// untrusted returns the SHA-256 fingerprint ("AA:BB:…") of the certificate err
// refused, when err is a refused certificate.
func untrusted(err error) (string, bool) {
	var fm *fingerprintMismatch
	if errors.As(err, &fm) {
		return fm.got, true
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) && len(ce.UnverifiedCertificates) > 0 {
		sum := sha256.Sum256(ce.UnverifiedCertificates[0].Raw)
		return formatFingerprint(sum[:]), true
	}
	var ue x509.UnknownAuthorityError
	if errors.As(err, &ue) && ue.Cert != nil {
		sum := sha256.Sum256(ue.Cert.Raw)
		return formatFingerprint(sum[:]), true
	}
	return "", false
}

// certHint says why a certificate was refused and what to do, or "" when err is
// not about a certificate.
func certHint(err error) string {
	fp, ok := untrusted(err)
	if !ok {
		return ""
	}
	var fm *fingerprintMismatch
	var he x509.HostnameError
	switch {
	case errors.As(err, &fm):
		return fmt.Sprintf("the server's certificate has SHA-256 fingerprint %s, which is not in --fingerprint: if the node's certificate was renewed, check it on the node (pvenode cert info) and use the new one", fp)
	case errors.As(err, &he):
		return fmt.Sprintf("the certificate is valid for %s, not for the address in --host: use one of those names in --host, or pin the certificate (SHA-256 fingerprint %s) with --fingerprint", strings.Join(append(he.Certificate.DNSNames, ipStrings(he.Certificate)...), ", "), fp)
	}
	return fmt.Sprintf("certificate not trusted: self-signed or from an unknown CA; its SHA-256 fingerprint is %s, compare it with the node's: pvenode cert info", fp)
}

func ipStrings(c *x509.Certificate) []string {
	var out []string
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

// fingerprintAdvice is the exact --fingerprint flag that accepts every untrusted
// certificate among errs (one per node), or "" when none was refused as untrusted.
func fingerprintAdvice(errs []error) string {
	var fps []string
	for _, err := range errs {
		var fm *fingerprintMismatch
		if errors.As(err, &fm) {
			continue
		}
		if fp, ok := untrusted(err); ok && !slices.Contains(fps, fp) {
			fps = append(fps, fp)
		}
	}
	if len(fps) == 0 {
		return ""
	}
	return "to trust it, add --fingerprint " + strings.Join(fps, ",") + " to the command line (it pins each node's certificate), or --ca-file with a copy of the cluster CA /etc/pve/pve-root-ca.pem, which covers every node"
}
