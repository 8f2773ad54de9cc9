// API object JSON -> slim objects (src/kube/convert.ts), and where the
// cluster config comes from (src/kube/client.ts loadClusterConfig).
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { objectKey, resourceVersionOf, toSlimEndpointSlice, toSlimNamespace, toSlimService } from '../src/kube/convert.js';
import { loadClusterConfig } from '../src/kube/client.js';
import { endpointSliceJson, namespaceJson, serviceJson } from '../testkit/fake-apiserver.js';

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
