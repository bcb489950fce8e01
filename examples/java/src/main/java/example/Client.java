package example;

import io.spiffe.provider.SpiffeSslContextFactory;
import io.spiffe.provider.SpiffeSslContextFactory.SslContextOptions;
import io.spiffe.spiffeid.SpiffeId;
import io.spiffe.workloadapi.X509Source;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.security.cert.X509Certificate;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLSocketFactory;

/**
 * HTTPS client with mutual TLS from the Workload API: {@code client URL...}.
 * Accepts only servers whose SPIFFE ID is in ALLOWED_SERVER_IDS (checked by
 * java-spiffe's trust manager during the handshake). REPEAT_FOR_SECONDS and
 * INTERVAL_MS repeat the calls; one JSON line per call; exit 1 on any failure.
 */
public final class Client {
    private static final String WHO = "java-client";
    private static final Pattern FIELD = Pattern.compile("\"(client_id|client_serial)\"\\s*:\\s*\"([^\"]*)\"");

    private Client() {}

    public static void main(String[] urls) throws Exception {
        if (urls.length == 0) {
            System.err.println("usage: client URL...");
            System.exit(2);
        }
        Set<SpiffeId> allowed = Spiffe.idsFromEnv("ALLOWED_SERVER_IDS");
        int repeat = Integer.parseInt(Spiffe.env("REPEAT_FOR_SECONDS", "0"));
        long interval = Long.parseLong(Spiffe.env("INTERVAL_MS", "1000"));
        // One connection per call, so each call shows the certificates in force.
        System.setProperty("http.keepAlive", "false");

        X509Source source = Spiffe.x509Source();
        Spiffe.logRotations(WHO, source);
        SSLContext ctx = SpiffeSslContextFactory.getSslContext(SslContextOptions.builder()
                .x509Source(source)
                .acceptedSpiffeIdsSupplier(() -> allowed)
                .sslProtocol("TLS")
                .build());
        SSLSocketFactory factory = ctx.getSocketFactory();

        long deadline = System.currentTimeMillis() + repeat * 1000L;
        int failures = 0;
        while (true) {
            for (String url : urls) {
                String line = call(url, factory);
                if (!line.contains("\"ok\":true")) {
                    failures++;
                }
                System.out.println(line);
                System.out.flush();
            }
            if (repeat <= 0 || System.currentTimeMillis() >= deadline) {
                break;
            }
            Thread.sleep(interval);
        }
        source.close();
        System.exit(failures > 0 ? 1 : 0);
    }

    private static String call(String url, SSLSocketFactory factory) {
        long start = System.currentTimeMillis();
        StringBuilder out = new StringBuilder("{\"client\":\"java\",\"url\":").append(Spiffe.q(url));
        HttpsURLConnection conn = null;
        try {
            conn = (HttpsURLConnection) new URL(url).openConnection();
            // No HostnameVerifier needed: the SPIFFE trust manager takes the place of
            // the JDK's host name check and verifies the server's SPIFFE ID instead.
            conn.setSSLSocketFactory(factory);
            conn.setConnectTimeout(10000);
            conn.setReadTimeout(10000);
            conn.connect();
            X509Certificate peer = (X509Certificate) conn.getServerCertificates()[0];
            int status = conn.getResponseCode();
            String body = read(status < 400 ? conn.getInputStream() : conn.getErrorStream());
            out.append(",\"status\":").append(status)
                    .append(",\"server_id\":").append(Spiffe.q(Spiffe.idOf(peer)))
                    .append(",\"server_serial\":").append(Spiffe.q(Spiffe.serial(peer)));
            Matcher m = FIELD.matcher(body);
            while (m.find()) {
                out.append(",\"").append(m.group(1)).append("\":").append(Spiffe.q(m.group(2)));
            }
            if (status == 200) {
                out.append(",\"ok\":true,\"response\":").append(body.trim());
            } else {
                out.append(",\"ok\":false,\"error\":").append(Spiffe.q("status " + status + ": " + body.trim()));
            }
        } catch (Exception e) {
            out.append(",\"ok\":false,\"error\":").append(Spiffe.q(e.getClass().getSimpleName() + ": " + e.getMessage()));
        } finally {
            if (conn != null) {
                conn.disconnect();
            }
        }
        return out.append(",\"ms\":").append(System.currentTimeMillis() - start).append('}').toString();
    }

    private static String read(InputStream in) throws IOException {
        if (in == null) {
            return "";
        }
        try (in) {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            in.transferTo(buf);
            return buf.toString(StandardCharsets.UTF_8);
        }
    }
}
