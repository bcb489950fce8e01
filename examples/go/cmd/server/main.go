// Command server is an HTTPS service that gets its certificate and its trust
// bundle from the SPIFFE Workload API and accepts only the clients whose SPIFFE
// IDs are listed in ALLOWED_CLIENT_IDS.
//
// The X509Source keeps watching the Workload API; the TLS config asks it for the
// current SVID on every handshake, so rotated certificates are used at once and
// the server never restarts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"example.org/mesh-examples/go/internal/ids"
)

type reply struct {
	Server       string `json:"server"`
	ServerID     string `json:"server_id"`
	ServerSerial string `json:"server_serial"`
	ClientID     string `json:"client_id"`
	ClientSerial string `json:"client_serial"`
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("go-server: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	allowed, err := ids.FromEnv("ALLOWED_CLIENT_IDS")
	if err != nil {
		return err
	}
	addr := ids.Getenv("LISTEN_ADDR", "127.0.0.1:8443")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The socket address comes from SPIFFE_ENDPOINT_SOCKET (unix:///path).
	// NewX509Source blocks until the first SVID arrives.
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return err
	}
	defer source.Close()

	first, err := source.GetX509SVID()
	if err != nil {
		return err
	}
	log.Printf("identity %s, serial %s", first.ID, ids.Serial(first.Certificates[0]))
	go logRotations(ctx, source)

	tlsConf := tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeOneOf(allowed...))
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "client certificate required", http.StatusUnauthorized)
			return
		}
		peer := r.TLS.PeerCertificates[0]
		peerID, err := x509svid.IDFromCert(peer)
		if err != nil {
			http.Error(w, "client certificate has no SPIFFE ID", http.StatusUnauthorized)
			return
		}
		own, err := source.GetX509SVID()
		if err != nil {
			http.Error(w, "no identity", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reply{
			Server:       "go",
			ServerID:     own.ID.String(),
			ServerSerial: ids.Serial(own.Certificates[0]),
			ClientID:     peerID.String(),
			ClientSerial: ids.Serial(peer),
		})
	})

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		// Handshake failures (refused clients) are expected; keep them short.
		ErrorLog: log.New(os.Stderr, "go-server: http: ", log.LstdFlags),
	}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Printf("listening on https://%s, accepting %v", ln.Addr(), allowed)
	// Certificates come from TLSConfig, so no file names are given.
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// logRotations prints a line each time the Workload API pushes a new SVID.
func logRotations(ctx context.Context, source *workloadapi.X509Source) {
	updated := source.Updated()
	for {
		select {
		case <-ctx.Done():
			return
		case <-updated:
			if svid, err := source.GetX509SVID(); err == nil {
				log.Printf("svid updated: %s serial %s", svid.ID, ids.Serial(svid.Certificates[0]))
			}
		}
	}
}
