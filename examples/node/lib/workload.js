'use strict';
// A small SPIFFE Workload API client for Node.js, and the glue that turns what it
// fetches into TLS settings: certificates and key in PEM, the trust bundle as CA
// list, and the peer's SPIFFE ID read from its URI SAN.
//
// The Workload API is gRPC over a Unix socket, without TLS. Every call must carry
// the metadata `workload.spiffe.io: true`. The service has no proto package, so
// its methods are `/SpiffeWorkloadAPI/<Method>`.

const path = require('node:path');
const crypto = require('node:crypto');
const { EventEmitter } = require('node:events');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_PATH = path.join(__dirname, '..', 'proto', 'workload.proto');

/** Turns SPIFFE_ENDPOINT_SOCKET (unix:///path or tcp://IP:port) into a gRPC target. */
function grpcTarget(endpoint) {
  if (!endpoint) {
    throw new Error('SPIFFE_ENDPOINT_SOCKET is not set (expected unix:///path/to/api.sock)');
  }
  if (endpoint.startsWith('unix:')) {
    const p = endpoint.replace(/^unix:(\/\/)?/, '');
    if (!p.startsWith('/')) {
      throw new Error(`workload api socket path must be absolute: ${endpoint}`);
    }
    return `unix://${p}`;
  }
  if (endpoint.startsWith('tcp://')) {
    return endpoint.slice('tcp://'.length);
  }
  throw new Error(`unsupported workload api address: ${endpoint}`);
}

function loadService() {
  const def = protoLoader.loadSync(PROTO_PATH, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def);
  return pkg.SpiffeWorkloadAPI;
}

/** Splits concatenated DER certificates (leaf first) into single DER buffers. */
function splitDer(buf) {
  const out = [];
  let i = 0;
  while (i < buf.length) {
    if (buf[i] !== 0x30) {
      throw new Error(`malformed DER certificate list at byte ${i}`);
    }
    let len = buf[i + 1];
    let header = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n === 0 || n > 4) {
        throw new Error(`unsupported DER length encoding at byte ${i}`);
      }
      len = 0;
      for (let k = 0; k < n; k++) {
        len = len * 256 + buf[i + 2 + k];
      }
      header += n;
    }
    const end = i + header + len;
    if (end > buf.length) {
      throw new Error('truncated DER certificate list');
    }
    out.push(buf.subarray(i, end));
    i = end;
  }
  return out;
}

function derToPem(der, label) {
  const b64 = Buffer.from(der).toString('base64').match(/.{1,64}/g).join('\n');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/**
 * Reads the SPIFFE ID from a certificate: the single `URI:spiffe://...` entry of
 * its subject alternative names. Accepts a crypto.X509Certificate or the legacy
 * object of getPeerCertificate() (field `subjectaltname`).
 */
function spiffeIdOf(cert) {
  if (!cert) return null;
  const san = cert.subjectAltName ?? cert.subjectaltname;
  if (!san) return null;
  const uris = san
    .split(', ')
    .filter((entry) => entry.startsWith('URI:'))
    .map((entry) => entry.slice(4));
  if (uris.length !== 1 || !uris[0].startsWith('spiffe://')) return null;
  return uris[0];
}

/**
 * One X509-SVID as TLS material. `cert` is the PEM chain (leaf first), `key` the
 * PKCS#8 PEM key, `ca` the PEM CA certificates of every trust domain we trust.
 */
function toTlsMaterial(resp) {
  if (!resp.svids || resp.svids.length === 0) {
    throw new Error('workload api sent no X509-SVID');
  }
  const svid = resp.svids[0]; // the default identity comes first
  const chain = splitDer(svid.x509_svid);
  const leaf = new crypto.X509Certificate(chain[0]);
  const keyObj = crypto.createPrivateKey({ key: svid.x509_svid_key, format: 'der', type: 'pkcs8' });
  const ca = [];
  for (const der of splitDer(svid.bundle)) ca.push(derToPem(der, 'CERTIFICATE'));
  for (const bundle of Object.values(resp.federated_bundles || {})) {
    for (const der of splitDer(bundle)) ca.push(derToPem(der, 'CERTIFICATE'));
  }
  return {
    spiffeId: svid.spiffe_id,
    serial: leaf.serialNumber,
    notAfter: leaf.validTo,
    cert: chain.map((der) => derToPem(der, 'CERTIFICATE')).join(''),
    key: keyObj.export({ format: 'pem', type: 'pkcs8' }),
    ca,
  };
}

/**
 * Watches FetchX509SVID and emits 'update' with fresh TLS material on every push
 * (the first one included) and 'error' on stream failures, after which it
 * reconnects with backoff. InvalidArgument is final (the request is wrong).
 */
class X509Watcher extends EventEmitter {
  constructor(endpoint = process.env.SPIFFE_ENDPOINT_SOCKET) {
    super();
    const Service = loadService();
    this.client = new Service(grpcTarget(endpoint), grpc.credentials.createInsecure());
    this.current = null;
    this.closed = false;
    this.backoffMs = 1000;
  }

  start() {
    if (this.closed) return;
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    this.stream = this.client.FetchX509SVID({}, md);
    this.stream.on('data', (resp) => {
      try {
        this.current = toTlsMaterial(resp);
        this.backoffMs = 1000;
        this.emit('update', this.current);
      } catch (err) {
        this.emit('error', err);
      }
    });
    const retry = (err) => {
      if (this.closed || this.stream === null) return;
      this.stream = null;
      if (err && err.code === grpc.status.INVALID_ARGUMENT) {
        this.emit('error', err);
        this.emit('fatal', err);
        return;
      }
      if (err) this.emit('error', err);
      const wait = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, 30000);
      this.timer = setTimeout(() => this.start(), wait);
    };
    this.stream.on('error', retry);
    this.stream.on('end', () => retry(null));
  }

  /** Resolves with the first TLS material, or rejects after timeoutMs. */
  ready(timeoutMs = 30000) {
    if (this.current) return Promise.resolve(this.current);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`no X509-SVID from the workload api within ${timeoutMs} ms`));
      }, timeoutMs);
      const onFatal = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      this.once('fatal', onFatal);
      this.once('update', (m) => {
        clearTimeout(timer);
        this.off('fatal', onFatal);
        resolve(m);
      });
    });
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.stream) this.stream.cancel();
    this.client.close();
  }
}

function unary(client, method, request, timeoutMs = 10000) {
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  return new Promise((resolve, reject) => {
    client[method](request, md, { deadline: Date.now() + timeoutMs }, (err, resp) => {
      if (err) reject(err);
      else resolve(resp);
    });
  });
}

/** Fetches a JWT-SVID (compact JWS) for the audience. */
async function fetchJwtSvid(audience, endpoint = process.env.SPIFFE_ENDPOINT_SOCKET) {
  const Service = loadService();
  const client = new Service(grpcTarget(endpoint), grpc.credentials.createInsecure());
  try {
    const audiences = Array.isArray(audience) ? audience : [audience];
    const resp = await unary(client, 'FetchJWTSVID', { audience: audiences });
    if (!resp.svids || resp.svids.length === 0) {
      throw new Error('workload api sent no JWT-SVID');
    }
    return { spiffeId: resp.svids[0].spiffe_id, token: resp.svids[0].svid };
  } finally {
    client.close();
  }
}

/** Asks the agent to validate a JWT-SVID for the audience; resolves with its SPIFFE ID. */
async function validateJwtSvid(token, audience, endpoint = process.env.SPIFFE_ENDPOINT_SOCKET) {
  const Service = loadService();
  const client = new Service(grpcTarget(endpoint), grpc.credentials.createInsecure());
  try {
    const resp = await unary(client, 'ValidateJWTSVID', { audience, svid: token });
    return { spiffeId: resp.spiffe_id, claims: resp.claims };
  } finally {
    client.close();
  }
}

/** Parses a comma-separated allow-list of SPIFFE IDs from an environment variable. */
function idsFromEnv(name) {
  const raw = (process.env[name] || '').trim();
  const ids = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (ids.length === 0) {
    throw new Error(`${name} is not set: give a comma-separated list of SPIFFE IDs`);
  }
  for (const id of ids) {
    if (!/^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)+$/.test(id)) {
      throw new Error(`${name}: invalid SPIFFE ID ${JSON.stringify(id)}`);
    }
  }
  return new Set(ids);
}

module.exports = {
  X509Watcher,
  fetchJwtSvid,
  validateJwtSvid,
  spiffeIdOf,
  splitDer,
  derToPem,
  grpcTarget,
  idsFromEnv,
  toTlsMaterial,
};
