// API object JSON -> slim objects (src/kube/convert.ts), and where the
// cluster config comes from (src/kube/client.ts loadClusterConfig).
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { objectKey, resourceVersionOf, toSlimEndpointSlice, toSlimNamespace, toSlimService } from '../src/kube/convert.js';
import { KubeApi, loadClusterConfig, type ClusterConfig } from '../src/kube/client.js';
import { FakeApiServer, endpointSliceJson, namespaceJson, serviceJson } from '../testkit/fake-apiserver.js';
import { TestCa, opensslAvailable } from './helpers/dot-server.js';

t.test('services', async (t) => {
  t.same(toSlimService(serviceJson('ns', 'web', { clusterIPs: ['10.96.0.5', 'fd00::5'], clusterIP: '10.96.0.5' })), {
    namespace: 'ns',
    name: 'web',
    kind: 'ClusterIP',
    clusterIPs: ['10.96.0.5', 'fd00::5'],
    externalName: '',
    ports: [{ name: 'http', port: 80, protocol: 'TCP' }],
    publishNotReadyAddresses: false,
  });
  // Pre-dual-stack object: clusterIP only.
  t.same(toSlimService({ metadata: { name: 'a', namespace: 'n' }, spec: { clusterIP: '10.0.0.1' } })?.clusterIPs, ['10.0.0.1']);
  // No IP allocated (or garbage): a ClusterIP service with no address.
  t.same(toSlimService({ metadata: { name: 'a', namespace: 'n' }, spec: { clusterIP: '', clusterIPs: ['nope', 7] } })?.clusterIPs, []);
  const headless = toSlimService(
    serviceJson('ns', 'db', {
      clusterIP: 'None',
      clusterIPs: ['None'],
      publishNotReadyAddresses: true,
      ports: [{ port: 5432 }, { name: 'dns', port: 53, protocol: 'UDP' }],
    }),
  );
  t.equal(headless?.kind, 'Headless');
  t.same(headless?.clusterIPs, []);
  t.equal(headless?.publishNotReadyAddresses, true);
  t.same(headless?.ports, [
    { name: '', port: 5432, protocol: 'TCP' },
    { name: 'dns', port: 53, protocol: 'UDP' },
  ]);
  const ext = toSlimService(serviceJson('ns', 'ext', { type: 'ExternalName', externalName: 'DB.Example.COM.' }));
  t.same([ext?.kind, ext?.externalName, ext?.clusterIPs], ['ExternalName', 'db.example.com', []]);
  // Ports without a usable number are dropped one by one.
  const ports = toSlimService({
    metadata: { name: 'p', namespace: 'n' },
    spec: { clusterIP: '10.0.0.2', ports: [{ port: 0 }, { port: 70000 }, { port: '80' }, { port: 8.5 }, null, { port: 443, name: 7 }] },
  })?.ports;
  t.same(ports, [{ name: '', port: 443, protocol: 'TCP' }]);
  // Malformed: skipped, never thrown.
  for (const bad of [null, 7, 'x', [], {}, { metadata: { name: 'x' } }, { metadata: { name: 'x', namespace: 'n' } }, { metadata: { namespace: 'n' }, spec: {} }]) {
    t.equal(toSlimService(bad), null, JSON.stringify(bad));
  }
  t.equal(toSlimService({ metadata: { name: 'e', namespace: 'n' }, spec: { type: 'ExternalName' } }), null, 'ExternalName without a name');
});

t.test('endpointslices', async (t) => {
  const s = toSlimEndpointSlice(
    endpointSliceJson('ns', 'web-x1', 'web', [
      { addresses: ['10.1.0.1'], hostname: 'web-0' },
      { addresses: ['10.1.0.2'], ready: false },
      { addresses: ['10.1.0.3'], ready: true },
      { addresses: ['not-an-ip', 'fd00::1'] },
    ]),
  );
  t.same(s, {
    namespace: 'ns',
    name: 'web-x1',
    serviceName: 'web',
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 80, protocol: 'TCP' }],
    endpoints: [
      { addresses: ['10.1.0.1'], ready: true, hostname: 'web-0' },
      { addresses: ['10.1.0.2'], ready: false, hostname: '' },
      { addresses: ['10.1.0.3'], ready: true, hostname: '' },
    ],
  });
  const v6 = toSlimEndpointSlice(endpointSliceJson('ns', 'v6', 'web', [{ addresses: ['fd00::1', '10.0.0.1'] }], { addressType: 'IPv6' }));
  t.same(v6?.endpoints[0]?.addresses, ['fd00::1']);
  const fqdn = toSlimEndpointSlice(endpointSliceJson('ns', 'f', 'web', [{ addresses: ['db.example.com'] }], { addressType: 'FQDN' }));
  t.same(fqdn?.endpoints[0]?.addresses, ['db.example.com']);
  // No label, no endpoints, "all ports" (port: null), junk endpoints.
  const bare = toSlimEndpointSlice({
    metadata: { name: 's', namespace: 'n' },
    addressType: 'IPv4',
    ports: [{ port: null }],
    endpoints: [null, { addresses: 'x' }, { addresses: [] }],
  });
  t.same(bare, { namespace: 'n', name: 's', serviceName: '', addressType: 'IPv4', ports: [], endpoints: [] });
  t.same(toSlimEndpointSlice({ metadata: { name: 's', namespace: 'n' }, addressType: 'IPv4', endpoints: null })?.endpoints, []);
  for (const bad of [null, {}, { metadata: { name: 's', namespace: 'n' } }, { metadata: { name: 's', namespace: 'n' }, addressType: 'ipv4' }, { metadata: { name: 's' }, addressType: 'IPv4' }]) {
    t.equal(toSlimEndpointSlice(bad), null, JSON.stringify(bad));
  }
});

t.test('namespaces, keys and resource versions', async (t) => {
  t.same(toSlimNamespace(namespaceJson('kube-system')), { name: 'kube-system' });
  t.equal(toSlimNamespace({ metadata: {} }), null);
  t.same(objectKey({ metadata: { name: 'a', namespace: 'b' } }), { namespace: 'b', name: 'a' });
  t.same(objectKey({ metadata: { name: 'a' } }), { namespace: '', name: 'a' });
  t.equal(objectKey({ metadata: { name: 5 } }), null);
  t.equal(resourceVersionOf({ metadata: { resourceVersion: '42' } }), '42');
  t.equal(resourceVersionOf({ metadata: { resourceVersion: 42 } }), '');
  t.equal(resourceVersionOf(null), '');
});

t.test('cluster config', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kconf-'));
  const saved = { host: process.env['KUBERNETES_SERVICE_HOST'], port: process.env['KUBERNETES_SERVICE_PORT'] };
  t.teardown(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  delete process.env['KUBERNETES_SERVICE_HOST'];
  delete process.env['KUBERNETES_SERVICE_PORT'];
  const none = await loadClusterConfig({ serviceAccountPrefix: dir });
  t.equal(none.kind, 'none');
  t.match(none.kind === 'none' ? none.reason : '', /not in a cluster/);

  process.env['KUBERNETES_SERVICE_HOST'] = '10.96.0.1';
  process.env['KUBERNETES_SERVICE_PORT'] = '443';
  const noToken = await loadClusterConfig({ serviceAccountPrefix: dir });
  t.equal(noToken.kind, 'none', 'in a pod without a mounted token');
  const sa = path.join(dir, 'var/run/secrets/kubernetes.io/serviceaccount');
  fs.mkdirSync(sa, { recursive: true });
  fs.writeFileSync(path.join(sa, 'token'), 'sa-token');
  fs.writeFileSync(path.join(sa, 'namespace'), 'kube-system');
  const inCluster = await loadClusterConfig({ serviceAccountPrefix: dir });
  t.equal(inCluster.kind, 'ok');
  if (inCluster.kind === 'ok') {
    t.equal(inCluster.source, 'in-cluster');
    t.equal(inCluster.server, 'https://10.96.0.1:443');
  }

  const file = (name: string, text: string): string => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text);
    return p;
  };
  const kc = (server: string, extra = ''): string =>
    [
      'apiVersion: v1',
      'clusters:',
      `- {name: c, cluster: {server: "${server}"${extra}}}`,
      'users:',
      '- {name: u, user: {token: t}}',
      'contexts:',
      '- {name: x, context: {cluster: c, user: u}}',
      'current-context: x',
    ].join('\n');
  const ok = await loadClusterConfig({ kubeconfig: file('ok', kc('https://api.example:6443/')) });
  t.same(ok.kind === 'ok' ? [ok.source, ok.server] : ok, ['kubeconfig', 'https://api.example:6443']);
  t.match(await loadClusterConfig({ kubeconfig: path.join(dir, 'missing') }), { kind: 'error', reason: /cannot load kubeconfig/ });
  t.match(await loadClusterConfig({ kubeconfig: file('http', kc('http://127.0.0.1:8080')) }), { kind: 'error', reason: /insecure-skip-tls-verify/ });
  t.equal((await loadClusterConfig({ kubeconfig: file('http-ok', kc('http://127.0.0.1:8080', ', insecure-skip-tls-verify: true')) })).kind, 'ok');
  t.match(await loadClusterConfig({ kubeconfig: file('bad-url', kc('not a url')) }), { kind: 'error', reason: /not a URL/ });
  t.match(await loadClusterConfig({ kubeconfig: file('ftp', kc('ftp://x', ', insecure-skip-tls-verify: true')) }), { kind: 'error', reason: /unsupported scheme/ });
  t.match(await loadClusterConfig({ kubeconfig: file('noctx', 'apiVersion: v1\nclusters: []\nusers: []\ncontexts: []\n') }), {
    kind: 'error',
    reason: /no current context/,
  });
});

/** One GET through the real client path; the status, or the error. */
async function getStatus(cfg: ClusterConfig): Promise<number | string> {
  if (cfg.kind !== 'ok') return `config: ${cfg.kind}`;
  const out = await new KubeApi(cfg).get('/api/v1/namespaces', AbortSignal.timeout(5000));
  if (!out.ok) return out.error;
  out.body.resume();
  return out.status;
}

// Our own credential reading (src/kube/credentials.ts), against an HTTPS fake
// API server with a CA of the test's own: what a pod's service account and
// the usual kubeconfigs send, without client-node.
t.test('credentials over TLS', { skip: opensslAvailable() ? false : 'no /usr/bin/openssl to make certificates' }, async (t) => {
  const ca = new TestCa('kapi');
  const other = new TestCa('other');
  const server = ca.issue('IP:127.0.0.1');
  const fake = new FakeApiServer({ tls: { ...server, ca: ca.cert } });
  await fake.start();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kcred-'));
  const saved = { host: process.env['KUBERNETES_SERVICE_HOST'], port: process.env['KUBERNETES_SERVICE_PORT'] };
  t.teardown(async () => {
    await fake.close();
    for (const d of [dir, ca.dir, other.dir]) fs.rmSync(d, { recursive: true, force: true });
    for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  const last = (): { authorization: string; clientCn: string } => fake.requests[fake.requests.length - 1] ?? { authorization: '', clientCn: '' };

  // In-cluster: the token and ca.crt of the service-account directory.
  process.env['KUBERNETES_SERVICE_HOST'] = '127.0.0.1';
  process.env['KUBERNETES_SERVICE_PORT'] = String(fake.port);
  const sa = path.join(dir, 'var/run/secrets/kubernetes.io/serviceaccount');
  fs.mkdirSync(sa, { recursive: true });
  fs.writeFileSync(path.join(sa, 'token'), 'token-one\n');
  fs.writeFileSync(path.join(sa, 'ca.crt'), ca.cert);
  const inCluster = await loadClusterConfig({ serviceAccountPrefix: dir });
  t.match(inCluster, { kind: 'ok', source: 'in-cluster', auth: 'native', server: `https://127.0.0.1:${fake.port}` });
  t.equal(await getStatus(inCluster), 200, 'the CA verifies the server');
  t.equal(last().authorization, 'Bearer token-one');
  // The kubelet rotates the projected token by swapping the file: the next request sends the new one.
  fs.writeFileSync(path.join(sa, 'token.new'), 'token-two-rotated');
  fs.renameSync(path.join(sa, 'token.new'), path.join(sa, 'token'));
  t.equal(await getStatus(inCluster), 200);
  t.equal(last().authorization, 'Bearer token-two-rotated', 'rotated token re-read');
  // A CA that did not sign the server: refused, not trusted blindly.
  fs.writeFileSync(path.join(sa, 'ca.crt'), other.cert);
  const wrongCa = await loadClusterConfig({ serviceAccountPrefix: dir });
  t.match(await getStatus(wrongCa), /certificate/, 'a server the CA did not sign is refused');

  // A kubeconfig: CA by a relative path, a client certificate as data.
  const client = ca.issue('DNS:node-agent', 'clientAuth');
  fs.writeFileSync(path.join(dir, 'ca.pem'), ca.cert);
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  const kubeconfig = (user: string, cluster = 'certificate-authority: ca.pem'): string => {
    const p = path.join(dir, `kc-${fake.requests.length}-${Math.random().toString(36).slice(2)}`);
    fs.writeFileSync(p, [
      'apiVersion: v1',
      'clusters:',
      `- {name: c, cluster: {server: "${fake.url}", ${cluster}}}`,
      'users:',
      `- {name: u, user: {${user}}}`,
      'contexts:',
      '- {name: x, context: {cluster: c, user: u}}',
      'current-context: x',
    ].join('\n'));
    return p;
  };
  const mtls = await loadClusterConfig({ kubeconfig: kubeconfig(`client-certificate-data: ${b64(client.cert)}, client-key-data: ${b64(client.key)}`) });
  t.match(mtls, { kind: 'ok', auth: 'native' });
  t.equal(await getStatus(mtls), 200);
  t.same(last(), { ...last(), clientCn: 'node-agent', authorization: '' }, 'the client certificate was presented, no token');

  fs.writeFileSync(path.join(dir, 'tok'), 'from-a-file');
  const tokenFile = await loadClusterConfig({ kubeconfig: kubeconfig('tokenFile: tok') });
  t.equal(await getStatus(tokenFile), 200);
  t.equal(last().authorization, 'Bearer from-a-file', 'tokenFile, relative to the kubeconfig');
  const basic = await loadClusterConfig({ kubeconfig: kubeconfig('username: admin, password: s3cret') });
  t.equal(await getStatus(basic), 200);
  t.equal(last().authorization, `Basic ${b64('admin:s3cret')}`);
  const skip = await loadClusterConfig({ kubeconfig: kubeconfig('token: tk', 'insecure-skip-tls-verify: true') });
  t.equal(await getStatus(skip), 200, 'insecure-skip-tls-verify: no CA needed');
  const noCa = await loadClusterConfig({ kubeconfig: kubeconfig('token: tk', 'tls-server-name: api.internal') });
  t.match(await getStatus(noCa), /certificate/, 'without a CA (and another server name) the server is not trusted');

  t.match(await loadClusterConfig({ kubeconfig: kubeconfig('tokenFile: missing-token') }), { kind: 'error', reason: /cannot load kubeconfig .*missing-token/ });
  t.match(await loadClusterConfig({ kubeconfig: kubeconfig('token: tk', 'certificate-authority: nowhere.pem') }), { kind: 'error', reason: /nowhere\.pem/ });
  // Exec plugins are run by us (exec-credentials.ts); auth-provider plugins are client-node's job: it is loaded for them only.
  const exec = await loadClusterConfig({ kubeconfig: kubeconfig('exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/true}') });
  t.match(exec, { kind: 'ok', auth: 'native' });
  t.match(await getStatus(exec), /ExecCredential|Unexpected end of JSON/, 'a plugin that prints nothing is a failed request, saying why');
  const provider = await loadClusterConfig({ kubeconfig: kubeconfig('auth-provider: {name: oidc, config: {id-token: x}}') });
  t.match(provider, { kind: 'ok', auth: 'client-node (user.auth-provider)' });
  t.match(await loadClusterConfig({ kubeconfig: kubeconfig('exec: {apiVersion: client.authentication.k8s.io/v1}') }), { kind: 'error', reason: /no command/ });
  // client-node runs a gcp or azure auth-provider's cmd-path with execSync: the whole agent (DNS included) would stop
  // while it runs, for ever if it hangs. client-go removed both providers (1.26) for exec plugins.
  for (const name of ['gcp', 'azure']) {
    const cmd = await loadClusterConfig({ kubeconfig: kubeconfig(`auth-provider: {name: ${name}, config: {cmd-path: /bin/sleep, cmd-args: '3600'}}`) });
    t.match(cmd, { kind: 'error', reason: /cmd-path.*exec plugin/ }, `${name} with cmd-path is refused, saying what to use`);
  }
});

// A cluster CA rotation: kube-controller-manager publishes the new CA in the
// kube-root-ca.crt ConfigMap, the kubelet swaps the projected ca.crt of every
// pod (old and new CA bundled while the rotation lasts), then the API
// server's serving certificate is re-issued by the new CA. client-go
// (ClientsAllowCARotation, kubernetes/kubernetes#119483) re-reads the CA file;
// a long-lived DaemonSet that kept the CA it started with can never reach
// the API server again until it is restarted: its cluster view freezes.
t.test('in-cluster: a rotated ca.crt is trusted without a restart', { skip: opensslAvailable() ? false : 'no /usr/bin/openssl to make certificates' }, async (t) => {
  const oldCa = new TestCa('kapi-old');
  const newCa = new TestCa('kapi-new');
  const before = new FakeApiServer({ tls: oldCa.issue('IP:127.0.0.1') });
  const after = new FakeApiServer({ tls: newCa.issue('IP:127.0.0.1') });
  await before.start();
  await after.start();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kca-'));
  const saved = { host: process.env['KUBERNETES_SERVICE_HOST'], port: process.env['KUBERNETES_SERVICE_PORT'] };
  t.teardown(async () => {
    await before.close();
    await after.close();
    for (const d of [dir, oldCa.dir, newCa.dir]) fs.rmSync(d, { recursive: true, force: true });
    for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  process.env['KUBERNETES_SERVICE_HOST'] = '127.0.0.1';
  process.env['KUBERNETES_SERVICE_PORT'] = String(before.port);
  const sa = path.join(dir, 'var/run/secrets/kubernetes.io/serviceaccount');
  fs.mkdirSync(sa, { recursive: true });
  fs.writeFileSync(path.join(sa, 'token'), 'tk');
  fs.writeFileSync(path.join(sa, 'ca.crt'), oldCa.cert);
  const cfg = await loadClusterConfig({ serviceAccountPrefix: dir });
  if (cfg.kind !== 'ok') throw new Error(`in-cluster config: ${cfg.kind}`);
  t.equal(await getStatus(cfg), 200, 'the CA the pod started with verifies the server');
  // The kubelet's atomic swap of the projected file: both CAs while the rotation lasts.
  fs.writeFileSync(path.join(sa, 'ca.crt.new'), oldCa.cert + newCa.cert);
  fs.renameSync(path.join(sa, 'ca.crt.new'), path.join(sa, 'ca.crt'));
  // The API server now presents a certificate of the new CA (here: the same credentials, the re-issued server).
  t.equal(await getStatus({ ...cfg, server: after.url }), 200, 'the rotated ca.crt verifies the re-issued server certificate');
});

// A kubeconfig's client certificate and key are files re-read when they change. A renewal is not atomic across the
// two files (or a file is caught half-written): for a moment the pair does not load. KubeApi.get() promises never to
// reject (the reflector then takes any rejection for a bug of its own: 'kube reflector failed; relisting', and drops
// its resourceVersion), but Node's https.request() throws at once on a PEM it cannot load, inside get()'s promise.
t.test('kubeconfig client certificate renewed in place: a pair caught half-written is a failed request, get() never rejects', { skip: opensslAvailable() ? false : 'no /usr/bin/openssl to make certificates' }, async (t) => {
  const ca = new TestCa('kapi-renew');
  const fake = new FakeApiServer({ tls: { ...ca.issue('IP:127.0.0.1'), ca: ca.cert } });
  await fake.start();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kcert-'));
  t.teardown(async () => {
    await fake.close();
    for (const d of [dir, ca.dir]) fs.rmSync(d, { recursive: true, force: true });
  });
  const client = ca.issue('DNS:node-agent', 'clientAuth');
  fs.writeFileSync(path.join(dir, 'ca.pem'), ca.cert);
  fs.writeFileSync(path.join(dir, 'client.crt'), client.cert);
  fs.writeFileSync(path.join(dir, 'client.key'), client.key);
  const kc = path.join(dir, 'kubeconfig');
  fs.writeFileSync(kc, [
    'apiVersion: v1',
    'clusters:',
    `- {name: c, cluster: {server: "${fake.url}", certificate-authority: ca.pem}}`,
    'users:',
    '- {name: u, user: {client-certificate: client.crt, client-key: client.key}}',
    'contexts:',
    '- {name: x, context: {cluster: c, user: u}}',
    'current-context: x',
  ].join('\n'));
  const cfg = await loadClusterConfig({ kubeconfig: kc });
  if (cfg.kind !== 'ok') throw new Error(`kubeconfig: ${cfg.kind}`);
  t.equal(await getStatus(cfg), 200, 'the client certificate files work');
  // The renewal has written half of the new certificate so far.
  fs.writeFileSync(path.join(dir, 'client.crt'), client.cert.slice(0, Math.floor(client.cert.length / 2)));
  let outcome: string;
  try {
    const out = await new KubeApi(cfg).get('/api/v1/namespaces', AbortSignal.timeout(5000));
    if (out.ok) out.body.resume();
    outcome = out.ok ? `status ${out.status}` : 'failed request';
  } catch (e) {
    outcome = `rejected: ${e instanceof Error ? e.message : String(e)}`;
  }
  t.notMatch(outcome, /^rejected/, `get() resolves, whatever the files hold (${outcome})`);
  t.equal(outcome, 'status 200', 'the last pair that loaded is used meanwhile');
  // The renewal done: a new pair is taken up.
  const renewed = ca.issue('DNS:node-agent', 'clientAuth');
  fs.writeFileSync(path.join(dir, 'client.key'), renewed.key);
  fs.writeFileSync(path.join(dir, 'client.crt'), renewed.cert);
  t.equal(await getStatus(cfg), 200, 'the renewed pair works');
});
