'use strict';
// Unit tests of the Workload API glue; certificates are made at test time with openssl.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const w = require('../lib/workload');

function makeCa(dir, name) {
  const key = path.join(dir, `${name}.key`);
  const crt = path.join(dir, `${name}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
    '-nodes', '-keyout', key, '-out', crt, '-days', '1', '-subj', `/O=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-addext', `subjectAltName=URI:spiffe://${name}`], { stdio: 'ignore' });
  return { key, crt };
}

function makeLeaf(dir, ca, id) {
  const key = path.join(dir, 'leaf.key');
  const csr = path.join(dir, 'leaf.csr');
  const crt = path.join(dir, 'leaf.pem');
  const ext = path.join(dir, 'leaf.ext');
  fs.writeFileSync(ext, `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectAltName=URI:${id}\n`);
  execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', csr, '-subj', '/O=leaf'], { stdio: 'ignore' });
  execFileSync('openssl', ['x509', '-req', '-in', csr, '-CA', ca.crt, '-CAkey', ca.key, '-CAcreateserial',
    '-out', crt, '-days', '1', '-extfile', ext], { stdio: 'ignore' });
  return { key, crt };
}

function der(pemFile) {
  return new crypto.X509Certificate(fs.readFileSync(pemFile)).raw;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'workload-test-'));
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));
const ca = makeCa(dir, 'example.org');
const other = makeCa(dir, 'other.org');
const leaf = makeLeaf(dir, ca, 'spiffe://example.org/node/server');

test('splitDer returns each certificate of a concatenated list', () => {
  const parts = w.splitDer(Buffer.concat([der(leaf.crt), der(ca.crt), der(other.crt)]));
  assert.equal(parts.length, 3);
  assert.deepEqual(Buffer.from(parts[1]), der(ca.crt));
  assert.equal(new crypto.X509Certificate(parts[2]).subject, 'O=other.org');
});

test('splitDer rejects a truncated list', () => {
  const whole = der(leaf.crt);
  assert.throws(() => w.splitDer(whole.subarray(0, whole.length - 1)), /truncated/);
});

test('spiffeIdOf reads the uri san of a certificate', () => {
  const cert = new crypto.X509Certificate(fs.readFileSync(leaf.crt));
  assert.equal(w.spiffeIdOf(cert), 'spiffe://example.org/node/server');
  assert.equal(w.spiffeIdOf({ subjectaltname: 'DNS:x, URI:spiffe://a.org/b' }), 'spiffe://a.org/b');
});

test('spiffeIdOf refuses two uri sans or a non-spiffe uri', () => {
  assert.equal(w.spiffeIdOf({ subjectaltname: 'URI:spiffe://a.org/b, URI:spiffe://a.org/c' }), null);
  assert.equal(w.spiffeIdOf({ subjectaltname: 'URI:https://a.org/b' }), null);
  assert.equal(w.spiffeIdOf(null), null);
});

test('toTlsMaterial turns a workload api response into pem that tls accepts', () => {
  const keyDer = crypto.createPrivateKey(fs.readFileSync(leaf.key)).export({ format: 'der', type: 'pkcs8' });
  const m = w.toTlsMaterial({
    svids: [{
      spiffe_id: 'spiffe://example.org/node/server',
      x509_svid: der(leaf.crt),
      x509_svid_key: keyDer,
      bundle: der(ca.crt),
    }],
    federated_bundles: { 'spiffe://other.org': der(other.crt) },
  });
  assert.equal(m.spiffeId, 'spiffe://example.org/node/server');
  assert.equal(m.ca.length, 2);
  assert.match(m.key, /BEGIN PRIVATE KEY/);
  // createSecureContext fails if the key does not match the certificate.
  require('node:tls').createSecureContext({ cert: m.cert, key: m.key, ca: m.ca });
  const leafCert = new crypto.X509Certificate(m.cert);
  assert.ok(leafCert.verify(new crypto.X509Certificate(m.ca[0]).publicKey));
});

test('toTlsMaterial refuses a response without svids', () => {
  assert.throws(() => w.toTlsMaterial({ svids: [] }), /no X509-SVID/);
});

test('grpcTarget accepts unix and tcp addresses and refuses others', () => {
  assert.equal(w.grpcTarget('unix:///run/api.sock'), 'unix:///run/api.sock');
  assert.equal(w.grpcTarget('unix:/run/api.sock'), 'unix:///run/api.sock');
  assert.equal(w.grpcTarget('tcp://127.0.0.1:8081'), '127.0.0.1:8081');
  assert.throws(() => w.grpcTarget('http://x'), /unsupported/);
  assert.throws(() => w.grpcTarget(''), /not set/);
});

test('idsFromEnv parses a list and rejects bad ids', () => {
  process.env.TEST_IDS = 'spiffe://example.org/a, spiffe://example.org/b';
  assert.deepEqual([...w.idsFromEnv('TEST_IDS')], ['spiffe://example.org/a', 'spiffe://example.org/b']);
  process.env.TEST_IDS = 'spiffe://example.org/a,example.org/b';
  assert.throws(() => w.idsFromEnv('TEST_IDS'), /invalid SPIFFE ID/);
  delete process.env.TEST_IDS;
  assert.throws(() => w.idsFromEnv('TEST_IDS'), /not set/);
});
