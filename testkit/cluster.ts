/**
 * A small simulated cluster for tests and the demo: the objects the fake API
 * server serves, and, written out by hand from the DNS spec, the A/AAAA
 * records a kube-dns would answer for them (so a test can compare what our
 * view answers against an independent statement of the spec).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { endpointSliceJson, namespaceJson, serviceJson, type FakeApiServer } from './fake-apiserver.js';
import type { StaticRecord } from './static-handler.js';

/** Loads the sample cluster into a fake API server. */
export function loadSampleCluster(api: FakeApiServer): void {
  for (const ns of ['default', 'kube-system', 'shop']) api.put('namespaces', namespaceJson(ns));
  api.put('services', serviceJson('default', 'kubernetes', { clusterIP: '10.96.0.1', ports: [{ name: 'https', port: 443 }] }));
  api.put('services', serviceJson('kube-system', 'kube-dns', { clusterIP: '10.96.0.10', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }] }));
  api.put('services', serviceJson('shop', 'web', { clusterIP: '10.96.1.10', clusterIPs: ['10.96.1.10', 'fd00:96::1:10'], ports: [{ name: 'http', port: 80 }] }));
  api.put('services', serviceJson('shop', 'cart', { clusterIP: '10.96.1.20' }));
  api.put('services', serviceJson('shop', 'db', { clusterIP: 'None', clusterIPs: ['None'], ports: [{ name: 'pg', port: 5432 }] }));
  api.put('endpointslices', endpointSliceJson('shop', 'db-abc', 'db', [
    { addresses: ['10.244.1.5'], ready: true, hostname: 'db-0' },
    { addresses: ['10.244.2.6'], ready: true, hostname: 'db-1' },
    { addresses: ['10.244.3.7'], ready: false, hostname: 'db-2' },
  ], { ports: [{ name: 'pg', port: 5432 }] }));
  api.put('services', serviceJson('shop', 'payments', { type: 'ExternalName', externalName: 'pay.example.com' }));
}

/** What the cluster DNS answers for the sample cluster (A/AAAA), per the Kubernetes DNS spec. */
export const SAMPLE_RECORDS: Record<string, StaticRecord> = {
  'kubernetes.default.svc.cluster.local': { A: ['10.96.0.1'], ttl: 5 },
  'kube-dns.kube-system.svc.cluster.local': { A: ['10.96.0.10'], ttl: 5 },
  'web.shop.svc.cluster.local': { A: ['10.96.1.10'], AAAA: ['fd00:96::1:10'], ttl: 5 },
  'cart.shop.svc.cluster.local': { A: ['10.96.1.20'], ttl: 5 },
  // Headless: the ready endpoints only (db-2 is not ready).
  'db.shop.svc.cluster.local': { A: ['10.244.1.5', '10.244.2.6'], ttl: 5 },
  'db-0.db.shop.svc.cluster.local': { A: ['10.244.1.5'], ttl: 5 },
  'db-1.db.shop.svc.cluster.local': { A: ['10.244.2.6'], ttl: 5 },
};

/** A kubeconfig for a fake API server on loopback (plain http needs insecure-skip-tls-verify with client-node 1.x). */
export function writeKubeconfig(serverUrl: string, token = 'sample-token'): string {
  const dir = mkdtempSync(join(tmpdir(), 'nldns-kube-'));
  const file = join(dir, 'kubeconfig');
  writeFileSync(
    file,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: sim',
      `  cluster: {server: "${serverUrl}", insecure-skip-tls-verify: true}`,
      'users:',
      '- name: agent',
      `  user: {token: ${token}}`,
      'contexts:',
      '- name: sim',
      '  context: {cluster: sim, user: agent}',
      'current-context: sim',
      '',
    ].join('\n'),
  );
  return file;
}
