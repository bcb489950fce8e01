package example;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpsConfigurator;
import com.sun.net.httpserver.HttpsExchange;
import com.sun.net.httpserver.HttpsParameters;
import com.sun.net.httpserver.HttpsServer;
import io.spiffe.bundle.jwtbundle.JwtBundleSet;
import io.spiffe.provider.SpiffeKeyManager;
import io.spiffe.provider.SpiffeTrustManager;
import io.spiffe.spiffeid.SpiffeId;
import io.spiffe.svid.jwtsvid.JwtSvid;
import io.spiffe.workloadapi.DefaultWorkloadApiClient;
import io.spiffe.workloadapi.WorkloadApiClient;
import io.spiffe.workloadapi.X509Source;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.cert.X509Certificate;
import java.util.Set;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicReference;
import javax.net.ssl.KeyManager;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSession;
import javax.net.ssl.TrustManager;

/**
 * HTTPS server with mutual TLS. Its SSLContext is built from java-spiffe: the key
 * manager hands out the current X509-SVID of the source on every handshake and
 * the trust manager checks the client's chain against the current bundle and
 * its SPIFFE ID against ALLOWED_CLIENT_IDS, so rotation needs no restart.
 *
 * <p>{@code GET /} answers with both identities. {@code GET /jwt} also wants a
 * JWT-SVID as {@code Authorization: Bearer}, for audience JWT_AUDIENCE, and
 * checks it twice: with the agent (ValidateJWTSVID) and locally against the
 * JWT bundles from the Workload API.
 *
 * <p>Env: SPIFFE_ENDPOINT_SOCKET, ALLOWED_CLIENT_IDS, LISTEN_ADDR (default
 * 127.0.0.1:8443), JWT_AUDIENCE (default: this server's SPIFFE ID),
 * ALLOWED_JWT_IDS (default: ALLOWED_CLIENT_IDS).
 */
public final class Server {
    private static final String WHO = "java-server";

    private Server() {}

    public static void main(String[] args) throws Exception {
        Set<SpiffeId> allowed = Spiffe.idsFromEnv("ALLOWED_CLIENT_IDS");
        Set<SpiffeId> allowedJwt = System.getenv("ALLOWED_JWT_IDS") == null
                ? allowed : Spiffe.idsFromEnv("ALLOWED_JWT_IDS");
        String addr = Spiffe.env("LISTEN_ADDR", "127.0.0.1:8443");
        int colon = addr.lastIndexOf(':');
        InetSocketAddress listen = new InetSocketAddress(addr.substring(0, colon),
                Integer.parseInt(addr.substring(colon + 1)));

        X509Source source = Spiffe.x509Source();
        SpiffeId self = source.getX509Svid().getSpiffeId();
        Spiffe.log(WHO, "identity " + self + ", serial " + Spiffe.serial(source.getX509Svid().getLeaf()));
        Spiffe.logRotations(WHO, source);

        // The same parts SpiffeSslContextFactory puts together (see Client), assembled
        // by hand to log refused clients: the key manager presents the source's
        // current SVID, the trust manager checks the chain against the current
        // bundle and the client's ID against the allow-list, on every handshake.
        SSLContext sslContext = SSLContext.getInstance("TLS"); // TLS 1.3 and 1.2
        sslContext.init(
                new KeyManager[] {new SpiffeKeyManager(source)},
                new TrustManager[] {new LoggingTrustManager(new SpiffeTrustManager(source, () -> allowed), WHO)},
                null);

        String audience = Spiffe.env("JWT_AUDIENCE", self.toString());
        WorkloadApiClient workloadApi = DefaultWorkloadApiClient.newClient(
                DefaultWorkloadApiClient.ClientOptions.builder().spiffeSocketPath(Spiffe.endpoint()).build());
        JwtBundles jwtBundles = new JwtBundles(workloadApi);

        HttpsServer server = HttpsServer.create(listen, 64);
        server.setHttpsConfigurator(new HttpsConfigurator(sslContext) {
            @Override
            public void configure(HttpsParameters params) {
                SSLParameters p = getSSLContext().getDefaultSSLParameters();
                p.setNeedClientAuth(true); // no client certificate, no connection
                params.setSSLParameters(p);
            }
        });
        server.createContext("/", exchange -> handleHello((HttpsExchange) exchange));
        server.createContext("/jwt", exchange ->
                handleJwt((HttpsExchange) exchange, workloadApi, jwtBundles, audience, allowedJwt));
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
        Spiffe.log(WHO, "listening on https://" + addr + ", accepting " + allowed + ", jwt audience " + audience);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            server.stop(0);
            try {
                source.close();
            } catch (IOException e) {
                Spiffe.log(WHO, "closing the x509 source: " + e.getMessage());
            }
        }));
    }

    private static void handleHello(HttpsExchange ex) throws IOException {
        try (ex) {
            String body = "{" + identities(ex.getSSLSession()) + "}\n";
            send(ex, 200, body);
        }
    }

    private static void handleJwt(HttpsExchange ex, WorkloadApiClient workloadApi, JwtBundles bundles,
            String audience, Set<SpiffeId> allowedJwt) throws IOException {
        try (ex) {
            String auth = ex.getRequestHeaders().getFirst("Authorization");
            if (auth == null || !auth.startsWith("Bearer ")) {
                send(ex, 401, "{\"error\":\"missing bearer token\"}\n");
                return;
            }
            String token = auth.substring("Bearer ".length()).trim();
            JwtBundleSet jwtBundles = bundles.current();
            if (jwtBundles == null) {
                send(ex, 503, "{\"error\":\"no jwt bundles from the workload api yet\"}\n");
                return;
            }
            String byAgent;
            String locally;
            try {
                // 1. Ask the agent: it checks signature, expiry and audience.
                byAgent = workloadApi.validateJwtSvid(token, audience).getSpiffeId().toString();
            } catch (Exception e) {
                send(ex, 401, "{\"error\":" + Spiffe.q("agent rejected the token: " + e.getMessage()) + "}\n");
                return;
            }
            JwtSvid svid;
            try {
                // 2. Check it here too, against the JWT bundles of the Workload API.
                svid = JwtSvid.parseAndValidate(token, jwtBundles, Set.of(audience));
                locally = svid.getSpiffeId().toString();
            } catch (Exception e) {
                send(ex, 401, "{\"error\":" + Spiffe.q("local validation failed: " + e.getMessage()) + "}\n");
                return;
            }
            if (!byAgent.equals(locally) || !allowedJwt.contains(svid.getSpiffeId())) {
                send(ex, 403, "{\"error\":" + Spiffe.q("jwt subject " + locally + " is not allowed") + "}\n");
                return;
            }
            String body = "{" + identities(ex.getSSLSession())
                    + ",\"jwt\":{\"validated_by_agent\":" + Spiffe.q(byAgent)
                    + ",\"validated_locally\":" + Spiffe.q(locally)
                    + ",\"audience\":" + Spiffe.q(audience)
                    + ",\"expiry\":" + Spiffe.q(svid.getExpiry().toInstant()) + "}}\n";
            send(ex, 200, body);
        }
    }

    private static String identities(SSLSession session) throws IOException {
        X509Certificate peer = (X509Certificate) session.getPeerCertificates()[0];
        X509Certificate own = (X509Certificate) session.getLocalCertificates()[0];
        return "\"server\":\"java\""
                + ",\"server_id\":" + Spiffe.q(Spiffe.idOf(own))
                + ",\"server_serial\":" + Spiffe.q(Spiffe.serial(own))
                + ",\"client_id\":" + Spiffe.q(Spiffe.idOf(peer))
                + ",\"client_serial\":" + Spiffe.q(Spiffe.serial(peer));
    }

    private static void send(HttpExchange ex, int status, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }

    /**
     * The JWT bundles of every trust domain, kept current by a Workload API watch.
     * Start-up does not wait for them: until the first update, /jwt answers 503.
     */
    static final class JwtBundles {
        private final AtomicReference<JwtBundleSet> current = new AtomicReference<>();

        JwtBundles(WorkloadApiClient client) {
            client.watchJwtBundles(new io.spiffe.workloadapi.Watcher<>() {
                @Override
                public void onUpdate(JwtBundleSet update) {
                    current.set(update);
                }

                @Override
                public void onError(Throwable error) {
                    Spiffe.log(WHO, "jwt bundle watch: " + error.getMessage());
                }
            });
        }

        /** The newest bundle set, or null before the first one arrived. */
        JwtBundleSet current() {
            return current.get();
        }
    }
}
