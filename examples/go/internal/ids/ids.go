// Package ids holds the small helpers the example client and server share:
// reading SPIFFE ID allow-lists from the environment and describing certificates.
package ids

import (
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FromEnv parses a comma-separated list of SPIFFE IDs from the named variable.
// An empty or missing variable is an error: an allow-list must be explicit.
func FromEnv(name string) ([]spiffeid.ID, error) {
	raw := strings.TrimSpace(os.Getenv(name))
	if raw == "" {
		return nil, fmt.Errorf("%s is not set: give a comma-separated list of SPIFFE IDs", name)
	}
	var out []spiffeid.ID
	for _, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, err := spiffeid.FromString(part)
		if err != nil {
			return nil, fmt.Errorf("%s: invalid SPIFFE ID %q: %w", name, part, err)
		}
		out = append(out, id)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no SPIFFE ID", name)
	}
	return out, nil
}

// Serial returns the certificate's serial number as lowercase hex.
func Serial(cert *x509.Certificate) string {
	if cert == nil || cert.SerialNumber == nil {
		return ""
	}
	return cert.SerialNumber.Text(16)
}

// Getenv returns the variable's value or def when it is unset or empty.
func Getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
