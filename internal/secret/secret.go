// Package secret resolves secret flag values such as --password, including the
// password files cv4pve-autosnap writes.
//
// cv4pve-autosnap stores --password file:PATH encrypted with TripleDES under a key
// that is published in its source, so the format is obfuscation, not protection:
// anyone who can read the file can recover the password. Protect such files with
// file permissions.
package secret

import (
	"bytes"
	"crypto/cipher"
	"crypto/des"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"
)

// cv4pveKey is cv4pve-autosnap's fixed TripleDES key (Corsinvest api-dotnet,
// StringHelper).
const cv4pveKey = "012345678901234567890123"

// v2Prefix starts the current cv4pve password file format:
// "v2:" + base64(8-byte IV + TripleDES-CBC/PKCS7 ciphertext).
const v2Prefix = "v2:"

// Resolve returns the secret a flag value stands for:
//
//   - "file:PATH" reads PATH. Content starting with "v2:" is a cv4pve-autosnap
//     password file and is decrypted; content that is valid base64 of a whole
//     number of TripleDES blocks that decrypts (ECB) to valid PKCS7-padded UTF-8 is
//     a legacy cv4pve-autosnap file and is decrypted; anything else is the secret
//     itself, without its trailing line break.
//   - any other value is the secret itself.
//
// Errors name the file but never contain its content.
func Resolve(v string) (string, error) {
	path, ok := strings.CutPrefix(v, "file:")
	if !ok {
		return v, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("--password file:%s: %w", path, err)
	}
	content := strings.TrimRight(string(b), "\r\n")
	if rest, ok := strings.CutPrefix(content, v2Prefix); ok {
		pw, err := decryptV2(strings.TrimSpace(rest))
		if err != nil {
			return "", fmt.Errorf("--password file:%s: starts with %q but is not a cv4pve-autosnap password file: %w", path, v2Prefix, err)
		}
		return pw, nil
	}
	if pw, ok := decryptLegacy(strings.TrimSpace(content)); ok {
		return pw, nil
	}
	return content, nil
}

func tripleDES() cipher.Block {
	b, err := des.NewTripleDESCipher([]byte(cv4pveKey))
	if err != nil {
		panic(err) // the key is a constant of the right length
	}
	return b
}

func decryptV2(s string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", errors.New("invalid base64")
	}
	bs := des.BlockSize
	if len(raw) < 2*bs || len(raw)%bs != 0 {
		return "", errors.New("wrong length")
	}
	iv, ct := raw[:bs], raw[bs:]
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(tripleDES(), iv).CryptBlocks(pt, ct)
	pt, err = unpad(pt)
	if err != nil {
		return "", err
	}
	return string(pt), nil
}

// decryptLegacy decrypts the pre-v2 format (base64 of TripleDES-ECB/PKCS7). A plain
// password that happens to be valid base64 of whole blocks decrypts to noise, which
// almost never has valid padding and UTF-8; then ok is false.
func decryptLegacy(s string) (string, bool) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(raw) == 0 || len(raw)%des.BlockSize != 0 {
		return "", false
	}
	blk := tripleDES()
	pt := make([]byte, len(raw))
	for i := 0; i < len(raw); i += des.BlockSize {
		blk.Decrypt(pt[i:i+des.BlockSize], raw[i:i+des.BlockSize])
	}
	pt, err = unpad(pt)
	if err != nil || !printableUTF8(pt) {
		return "", false
	}
	return string(pt), true
}

func unpad(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, errors.New("empty plaintext")
	}
	n := int(b[len(b)-1])
	if n == 0 || n > des.BlockSize || n > len(b) {
		return nil, errors.New("bad padding (wrong key or corrupted file)")
	}
	if !bytes.Equal(b[len(b)-n:], bytes.Repeat([]byte{byte(n)}, n)) {
		return nil, errors.New("bad padding (wrong key or corrupted file)")
	}
	return b[:len(b)-n], nil
}

func printableUTF8(b []byte) bool {
	if len(b) == 0 || !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
