// Command client calls HTTPS services over mutual TLS with an identity from the
// SPIFFE Workload API, and accepts only servers whose SPIFFE IDs are listed in
// ALLOWED_SERVER_IDS.
//
//	client [-write-bundle FILE] URL...
//
// Each call prints one JSON line. With REPEAT_FOR_SECONDS set it keeps calling
// every URL (one round every INTERVAL_MS, default 1000) for that long, which
// shows certificate rotation without a restart. Every call opens a new
// connection, so each one shows the certificates in force at that moment.
//
// EXTRA_BUNDLE_FILE (PEM, optional) adds CA certificates of another trust
// domain, named by EXTRA_BUNDLE_TRUST_DOMAIN; the test matrix uses it to let a
// client of a foreign trust domain verify the server, so the server alone
// decides whether to refuse it.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"example.org/mesh-examples/go/internal/ids"
)

type result struct {
	Client       string          `json:"client"`
	URL          string          `json:"url"`
	OK           bool            `json:"ok"`
	Status       int             `json:"status,omitempty"`
	ServerID     string          `json:"server_id,omitempty"`
	ServerSerial string          `json:"server_serial,omitempty"`
	ClientID     string          `json:"client_id,omitempty"`
	ClientSerial string          `json:"client_serial,omitempty"`
	Response     json.RawMessage `json:"response,omitempty"`
	Error        string          `json:"error,omitempty"`
	Millis       int64           `json:"ms"`
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("go-client: ")
	writeBundle := flag.String("write-bundle", "", "write the CA bundle of this workload's trust domain to FILE (PEM) and exit")
	flag.Parse()
	code, err := run(*writeBundle, flag.Args())
	if err != nil {
		log.Print(err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run(writeBundle string, urls []string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	source, err := workloadapi.NewX509Source(ctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("workload api: %w", err)
	}
	defer source.Close()

	svid, err := source.GetX509SVID()
	if err != nil {
		return 0, err
	}
	if writeBundle != "" {
		return 0, writeBundleFile(source, svid.ID.TrustDomain(), writeBundle)
	}
	if len(urls) == 0 {
		return 0, errors.New("usage: client URL...")
	}
	allowed, err := ids.FromEnv("ALLOWED_SERVER_IDS")
	if err != nil {
		return 0, err
	}
	bundles, err := bundleSource(source)
	if err != nil {
		return 0, err
	}

	// verified records the server ID that passed chain verification and the
	// allow-list on the current connection. A call that fails after that was
	// refused by the server, not by us.
	var mu sync.Mutex
	verified := ""
	authorize := func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		if err := tlsconfig.AuthorizeOneOf(allowed...)(id, chains); err != nil {
			return err
		}
		mu.Lock()
		verified = id.String()
		mu.Unlock()
		return nil
	}
	httpClient := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   tlsconfig.MTLSClientConfig(source, bundles, authorize),
			DisableKeepAlives: true,
		},
	}

	repeat, _ := strconv.Atoi(os.Getenv("REPEAT_FOR_SECONDS"))
	interval, err := strconv.Atoi(ids.Getenv("INTERVAL_MS", "1000"))
	if err != nil {
		return 0, fmt.Errorf("INTERVAL_MS: %w", err)
	}
	deadline := time.Now().Add(time.Duration(repeat) * time.Second)
	out := json.NewEncoder(os.Stdout)
	failures := 0
	for {
		for _, url := range urls {
			mu.Lock()
			verified = ""
			mu.Unlock()
			res := call(httpClient, url)
			mu.Lock()
			if res.ServerID == "" {
				res.ServerID = verified
			}
			mu.Unlock()
			if !res.OK {
				failures++
			}
			_ = out.Encode(res)
		}
		if repeat <= 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Duration(interval) * time.Millisecond)
	}
	if failures > 0 {
		return 1, nil
	}
	return 0, nil
}

func call(c *http.Client, url string) result {
	start := time.Now()
	res := result{Client: "go", URL: url}
	defer func() { res.Millis = time.Since(start).Milliseconds() }()
	resp, err := c.Get(url)
	if err != nil {
		res.Error = err.Error()
		res.Millis = time.Since(start).Milliseconds()
		return res
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	res.Status = resp.StatusCode
	res.Millis = time.Since(start).Milliseconds()
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		res.ServerSerial = ids.Serial(resp.TLS.PeerCertificates[0])
	}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	var reply struct {
		ServerID     string `json:"server_id"`
		ClientID     string `json:"client_id"`
		ClientSerial string `json:"client_serial"`
	}
	if json.Unmarshal(body, &reply) == nil {
		res.Response = body
		res.ClientID = reply.ClientID
		res.ClientSerial = reply.ClientSerial
	}
	if resp.StatusCode != http.StatusOK {
		res.Error = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
		return res
	}
	res.OK = true
	return res
}

// bundleSource is the Workload API source, plus the CAs of EXTRA_BUNDLE_FILE
// for the trust domain EXTRA_BUNDLE_TRUST_DOMAIN when both are set.
func bundleSource(source *workloadapi.X509Source) (x509bundle.Source, error) {
	file, tdName := os.Getenv("EXTRA_BUNDLE_FILE"), os.Getenv("EXTRA_BUNDLE_TRUST_DOMAIN")
	if file == "" || tdName == "" {
		return source, nil
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, err
	}
	extra, err := x509bundle.Load(td, file)
	if err != nil {
		return nil, err
	}
	return withExtra{source: source, extra: extra}, nil
}

type withExtra struct {
	source x509bundle.Source
	extra  *x509bundle.Bundle
}

func (w withExtra) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td == w.extra.TrustDomain() {
		return w.extra, nil
	}
	return w.source.GetX509BundleForTrustDomain(td)
}

func writeBundleFile(source *workloadapi.X509Source, td spiffeid.TrustDomain, path string) error {
	bundle, err := source.GetX509BundleForTrustDomain(td)
	if err != nil {
		return err
	}
	var buf []byte
	for _, cert := range bundle.X509Authorities() {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return os.WriteFile(path, buf, 0o644)
}
