package secret

import (
	"crypto/cipher"
	"crypto/des"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func pad(b []byte) []byte {
	n := des.BlockSize - len(b)%des.BlockSize
	for i := 0; i < n; i++ {
		b = append(b, byte(n))
	}
	return b
}

// encryptV2 produces cv4pve-autosnap's current password file content.
func encryptV2(t *testing.T, pw string, iv []byte) string {
	t.Helper()
	blk, err := des.NewTripleDESCipher([]byte(cv4pveKey))
	if err != nil {
		t.Fatal(err)
	}
	pt := pad([]byte(pw))
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(blk, iv).CryptBlocks(ct, pt)
	return "v2:" + base64.StdEncoding.EncodeToString(append(append([]byte{}, iv...), ct...))
}

// encryptLegacy produces the pre-v2 content: base64 of TripleDES-ECB/PKCS7.
func encryptLegacy(t *testing.T, pw string) string {
	t.Helper()
	blk, err := des.NewTripleDESCipher([]byte(cv4pveKey))
	if err != nil {
		t.Fatal(err)
	}
	pt := pad([]byte(pw))
	ct := make([]byte, len(pt))
	for i := 0; i < len(pt); i += des.BlockSize {
		blk.Encrypt(ct[i:], pt[i:i+des.BlockSize])
	}
	return base64.StdEncoding.EncodeToString(ct)
}

func file(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return "file:" + p
}

func TestResolveCv4PVEPasswordFiles(t *testing.T) {
	iv := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	cases := []struct {
		name, content, want string
	}{
		{"plain", "s3cret", "s3cret"},
		{"plain with newline", "s3cret\n", "s3cret"},
		{"plain with CRLF", "s3cret\r\n", "s3cret"},
		{"plain keeps inner spaces", "  two words  \n", "  two words  "},
		{"v2", encryptV2(t, "Pa$$w0rd!", iv), "Pa$$w0rd!"},
		{"v2 with newline", encryptV2(t, "Pa$$w0rd!", iv) + "\n", "Pa$$w0rd!"},
		{"v2 exactly one block", encryptV2(t, "12345678", iv), "12345678"},
		{"v2 unicode", encryptV2(t, "pässwörd€", iv), "pässwörd€"},
		{"legacy", encryptLegacy(t, "old-secret"), "old-secret"},
		{"legacy with newline", encryptLegacy(t, "old-secret") + "\n", "old-secret"},
		// Valid base64 of one block that is not a cv4pve file stays plain text.
		{"base64-looking plain", "QUJDREVGR0g=", "QUJDREVGR0g="},
		{"base64 not whole blocks", "c2VjcmV0", "c2VjcmV0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(file(t, tc.content))
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got != tc.want {
				t.Errorf("Resolve = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestResolvePVEPlainValue(t *testing.T) {
	for _, v := range []string{"", "secret", "v2:notafile", "File:x"} {
		if got, err := Resolve(v); err != nil || got != v {
			t.Errorf("Resolve(%q) = %q, %v; want it unchanged", v, got, err)
		}
	}
}

func TestResolvePVEErrorsHideContent(t *testing.T) {
	const pw = "hunter2-very-secret"
	// A v2 file with a corrupt body must fail, not be sent as the password.
	good := encryptV2(t, pw, []byte("ivivivIV"))
	corrupt := good[:len(good)-4] + "AAAA"
	for _, content := range []string{"v2:!!!not base64", "v2:" + base64.StdEncoding.EncodeToString([]byte("short")), corrupt} {
		_, err := Resolve(file(t, content))
		if err == nil {
			t.Errorf("Resolve of %q succeeded", content)
			continue
		}
		if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), content[3:]) {
			t.Errorf("error reveals the file content: %v", err)
		}
	}
	_, err := Resolve("file:" + filepath.Join(t.TempDir(), "missing"))
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}
