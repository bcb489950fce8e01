package example;

import io.spiffe.spiffeid.SpiffeId;
import io.spiffe.workloadapi.DefaultX509Source;
import io.spiffe.workloadapi.X509Source;
import java.security.cert.CertificateParsingException;
import java.security.cert.X509Certificate;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/** Small helpers shared by the client and the server. */
final class Spiffe {
    private Spiffe() {}

    /** The Workload API address, e.g. {@code unix:///tmp/mesh-agent/public/api.sock}. */
    static String endpoint() {
        String value = System.getenv("SPIFFE_ENDPOINT_SOCKET");
        if (value == null || value.isBlank()) {
            throw new IllegalStateException("SPIFFE_ENDPOINT_SOCKET is not set (expected unix:///path/to/api.sock)");
        }
        return value;
    }

    /**
     * Opens an X509Source: it fetches the SVID and bundles, blocks until the first
     * ones arrive, and keeps watching the Workload API for rotations.
     */
    static X509Source x509Source() throws Exception {
        DefaultX509Source.X509SourceOptions options = DefaultX509Source.X509SourceOptions.builder()
                .spiffeSocketPath(endpoint())
                .initTimeout(Duration.ofSeconds(30))
                .build();
        return DefaultX509Source.newSource(options);
    }

    /** Reads a comma-separated list of SPIFFE IDs; an empty list is an error. */
    static Set<SpiffeId> idsFromEnv(String name) {
        String raw = System.getenv(name);
        Set<SpiffeId> ids = new LinkedHashSet<>();
        if (raw != null) {
            for (String part : raw.split(",")) {
                if (!part.isBlank()) {
                    ids.add(SpiffeId.parse(part.trim()));
                }
            }
        }
        if (ids.isEmpty()) {
            throw new IllegalStateException(name + " is not set: give a comma-separated list of SPIFFE IDs");
        }
        return Set.copyOf(ids);
    }

    static String env(String name, String def) {
        String value = System.getenv(name);
        return value == null || value.isBlank() ? def : value;
    }

    /** The single spiffe:// URI SAN of a certificate, or null. */
    static String idOf(X509Certificate cert) {
        try {
            Collection<List<?>> sans = cert.getSubjectAlternativeNames();
            List<String> uris = new ArrayList<>();
            if (sans != null) {
                for (List<?> san : sans) {
                    if (Integer.valueOf(6).equals(san.get(0))) { // 6 = uniformResourceIdentifier
                        uris.add(String.valueOf(san.get(1)));
                    }
                }
            }
            return uris.size() == 1 && uris.get(0).startsWith("spiffe://") ? uris.get(0) : null;
        } catch (CertificateParsingException e) {
            return null;
        }
    }

    static String serial(X509Certificate cert) {
        return cert.getSerialNumber().toString(16);
    }

    /** Logs a line whenever the source starts handing out a new SVID. */
    static void logRotations(String who, X509Source source) {
        AtomicReference<String> last = new AtomicReference<>(serial(source.getX509Svid().getLeaf()));
        ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "svid-rotation-log");
            t.setDaemon(true);
            return t;
        });
        timer.scheduleAtFixedRate(() -> {
            String now = serial(source.getX509Svid().getLeaf());
            if (!now.equals(last.getAndSet(now))) {
                log(who, "svid updated: serial " + now);
            }
        }, 1, 1, TimeUnit.SECONDS);
    }

    static void log(String who, String msg) {
        System.err.println(Instant.now() + " " + who + ": " + msg);
    }

    /** Minimal JSON string quoting for the replies. */
    static String q(Object value) {
        if (value == null) {
            return "null";
        }
        StringBuilder sb = new StringBuilder("\"");
        for (char c : value.toString().toCharArray()) {
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }
}
