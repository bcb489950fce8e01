'use strict';
// HTTPS client with mutual TLS and an identity from the SPIFFE Workload API.
//
//   node client.js URL...
//
// Env: SPIFFE_ENDPOINT_SOCKET (unix:///path), ALLOWED_SERVER_IDS (comma list),
// REPEAT_FOR_SECONDS (keep calling for that long, default: one round),
// INTERVAL_MS (between rounds, default 1000), JWT_AUDIENCE (if set, fetch a
// JWT-SVID for it and send it as `Authorization: Bearer`), KEEP_ALIVE=1 (reuse
// one connection per server instead of one per call; shows that a server's
// certificate rotation does not drop open connections).
// Prints one JSON line per call; exits 1 if any call failed.

const https = require('node:https');
const tls = require('node:tls');
const { X509Watcher, fetchJwtSvid, spiffeIdOf, idsFromEnv } = require('./lib/workload');

function log(msg) {
  process.stderr.write(`${new Date().toISOString()} node-client: ${msg}\n`);
}

function call(url, material, allowed, token, agent) {
  const start = Date.now();
  const result = { client: 'node', url, ok: false, t: start };
  return new Promise((resolve) => {
    const done = (extra) => resolve({ ...result, ...extra, ms: Date.now() - start });
    const headers = token ? { authorization: `Bearer ${token}` } : {};
    const req = https.request(
      url,
      {
        method: 'GET',
        headers,
        agent, // false: one connection per call, so each call shows the certificates in force
        secureContext: material.context,
        rejectUnauthorized: true, // the chain must end at a CA of the trust bundle
        // Replaces the DNS hostname check: the server is who its URI SAN says.
        checkServerIdentity: (_host, cert) => {
          const id = spiffeIdOf(cert);
          if (!id || !allowed.has(id)) {
            return new Error(`server spiffe id ${id || '(none)'} is not allowed`);
          }
          result.server_id = id;
          return undefined;
        },
        timeout: 10000,
      },
      (res) => {
        const chunks = [];
        const peer = res.socket.getPeerCertificate();
        result.server_serial = peer.serialNumber;
        result.local_port = res.socket.localPort;
        // A reused keep-alive connection skips checkServerIdentity: it was checked when opened.
        if (!result.server_id) result.server_id = spiffeIdOf(peer);
        result.status = res.statusCode;
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          let parsed;
          try {
            parsed = JSON.parse(body);
          } catch {
            parsed = undefined;
          }
          if (parsed) {
            result.response = parsed;
            result.client_id = parsed.client_id;
            result.client_serial = parsed.client_serial;
          }
          if (res.statusCode !== 200) {
            done({ error: `status ${res.statusCode}: ${body.trim()}` });
          } else {
            done({ ok: true });
          }
        });
        res.on('error', (err) => done({ error: err.message }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => done({ error: err.message }));
    req.end();
  });
}

async function main() {
  const urls = process.argv.slice(2);
  if (urls.length === 0) throw new Error('usage: node client.js URL...');
  const allowed = idsFromEnv('ALLOWED_SERVER_IDS');
  const repeat = Number(process.env.REPEAT_FOR_SECONDS || 0);
  const interval = Number(process.env.INTERVAL_MS || 1000);
  const audience = process.env.JWT_AUDIENCE;
  const agent = process.env.KEEP_ALIVE === '1' ? new https.Agent({ keepAlive: true, maxSockets: 1 }) : false;

  const watcher = new X509Watcher();
  watcher.on('error', (err) => log(`workload api: ${err.message}`));
  let material;
  const adopt = (m) => {
    material = { ...m, context: tls.createSecureContext({ cert: m.cert, key: m.key, ca: m.ca }) };
  };
  watcher.on('update', (m) => {
    if (material && material.serial !== m.serial) log(`svid updated: serial ${m.serial}`);
    adopt(m);
  });
  watcher.start();
  adopt(await watcher.ready());

  const deadline = Date.now() + repeat * 1000;
  let failures = 0;
  for (;;) {
    for (const url of urls) {
      let token;
      if (audience) {
        try {
          token = (await fetchJwtSvid(audience)).token;
        } catch (err) {
          failures++;
          process.stdout.write(JSON.stringify({ client: 'node', url, ok: false, error: `jwt-svid: ${err.message}` }) + '\n');
          continue;
        }
      }
      const r = await call(url, material, allowed, token, agent);
      if (!r.ok) failures++;
      process.stdout.write(JSON.stringify(r) + '\n');
    }
    if (repeat <= 0 || Date.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, interval));
  }
  if (agent) agent.destroy();
  watcher.close();
  process.exitCode = failures > 0 ? 1 : 0;
}

main().catch((err) => {
  log(err.stack || String(err));
  process.exit(2);
});
