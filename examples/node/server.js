'use strict';
// HTTPS server with mutual TLS. Its certificate, key and trust bundle come from
// the SPIFFE Workload API and are swapped in place when they rotate
// (server.setSecureContext), so open connections are not dropped.
//
// Env: SPIFFE_ENDPOINT_SOCKET (unix:///path), ALLOWED_CLIENT_IDS (comma list),
// LISTEN_ADDR (default 127.0.0.1:8443).

const https = require('node:https');
const { X509Watcher, spiffeIdOf, idsFromEnv } = require('./lib/workload');

function log(msg) {
  process.stderr.write(`${new Date().toISOString()} node-server: ${msg}\n`);
}

async function main() {
  const allowed = idsFromEnv('ALLOWED_CLIENT_IDS');
  const addr = process.env.LISTEN_ADDR || '127.0.0.1:8443';
  const sep = addr.lastIndexOf(':');
  const host = addr.slice(0, sep);
  const port = Number(addr.slice(sep + 1));

  const watcher = new X509Watcher();
  watcher.on('error', (err) => log(`workload api: ${err.message}`));
  watcher.start();
  const first = await watcher.ready();
  log(`identity ${first.spiffeId}, serial ${first.serial}`);

  const server = https.createServer(
    {
      cert: first.cert,
      key: first.key,
      ca: first.ca, // the trust bundle: client chains must end at one of these CAs
      requestCert: true, // ask for a client certificate...
      rejectUnauthorized: true, // ...and refuse the handshake without a valid one
      minVersion: 'TLSv1.2',
    },
    (req, res) => {
      // Checked again per request, in case a listener order ever changes.
      const peer = req.socket.getPeerX509Certificate();
      const clientId = spiffeIdOf(peer);
      if (!clientId || !allowed.has(clientId)) {
        res.writeHead(403, { 'content-type': 'text/plain' }).end('spiffe id not allowed\n');
        return;
      }
      const own = req.socket.getX509Certificate();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          server: 'node',
          server_id: spiffeIdOf(own),
          server_serial: own.serialNumber,
          client_id: clientId,
          client_serial: peer.serialNumber,
        }) + '\n',
      );
    },
  );

  // Node checks the chain against `ca`, but knows nothing of SPIFFE IDs: its
  // hostname check does not apply to clients. Check the URI SAN as soon as the
  // handshake is done and close the connection before any request is read.
  server.on('secureConnection', (socket) => {
    const id = spiffeIdOf(socket.getPeerX509Certificate());
    if (!id || !allowed.has(id)) {
      log(`refused client ${id || '(no spiffe id)'}`);
      socket.destroy();
    }
  });
  server.on('tlsClientError', (err) => log(`tls handshake refused: ${err.code || err.message}`));

  watcher.on('update', (m) => {
    // New handshakes use the new context; existing connections keep theirs.
    server.setSecureContext({ cert: m.cert, key: m.key, ca: m.ca });
    log(`svid updated: ${m.spiffeId} serial ${m.serial}`);
  });

  server.listen(port, host, () => {
    log(`listening on https://${host}:${port}, accepting ${[...allowed].join(', ')}`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    watcher.close();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  log(err.stack || String(err));
  process.exit(2);
});
