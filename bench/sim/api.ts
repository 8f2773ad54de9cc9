/**
 * The simulated cluster as a Kubernetes API: the same zone the fake kube-dns
 * answers (sim/zones.ts), as Namespaces and dual-stack ClusterIP Services on
 * the fake API server of the tests (testkit/fake-apiserver.ts), so an agent
 * started with `--kubeconfig` builds its view of exactly what kube-dns
 * serves. Each Service's cluster IPs are the addresses the zone derives from
 * its name, so an answer from the agent's view passes the same checker as an
 * answer from kube-dns.
 *
 * Not listed: the miss workload's unique `u-…` services (they exist in the
 * DNS only, like custom records a cluster DNS may carry) and EndpointSlices
 * (no headless services here).
 */
import { writeFileSync } from 'node:fs';
import { namespaceJson, serviceJson, type FakeApiServer, type Obj } from '../../testkit/fake-apiserver.js';
import { QTYPE_A, QTYPE_AAAA, expectedAnswer, listedServices, namespaceName, type ZoneConfig } from './zones.js';

/** An IPv6 address in the canonical form the API server writes (RFC 5952: zeros compressed). */
export function canonicalIpv6(addr: string): string {
  return new URL(`http://[${addr}]/`).hostname.slice(1, -1);
}

/** The Service object for `name` in `namespace`: ClusterIP, dual stack, the zone's A and AAAA as its cluster IPs. */
export function zoneServiceJson(namespace: string, name: string, cfg: ZoneConfig): Obj {
  const fqdn = `${name}.${namespace}.svc.${cfg.clusterDomain}`;
  const v4 = expectedAnswer(fqdn, QTYPE_A, cfg).addresses[0];
  const v6 = expectedAnswer(fqdn, QTYPE_AAAA, cfg).addresses[0];
  if (v4 === undefined || v6 === undefined) throw new Error(`sim/api: ${fqdn} does not exist in the zone`);
  const obj = serviceJson(namespace, name, { clusterIP: v4, clusterIPs: [v4, canonicalIpv6(v6)] });
  const spec = obj['spec'] as Obj;
  spec['ipFamilies'] = ['IPv4', 'IPv6'];
  spec['ipFamilyPolicy'] = 'RequireDualStack';
  return obj;
}

/** Loads every namespace and listed service of the zone; returns how many Services. */
export function loadZone(api: FakeApiServer, cfg: ZoneConfig): number {
  for (let ns = 0; ns < cfg.namespaces; ns++) api.put('namespaces', namespaceJson(namespaceName(ns)));
  const services = listedServices(cfg);
  for (const s of services) api.put('services', zoneServiceJson(s.namespace, s.name, cfg));
  return services.length;
}

/** A kubeconfig for the fake API server (plain http on loopback, bearer token), as testkit/cluster.ts writes it. */
export function writeKubeconfig(file: string, serverUrl: string, token: string): void {
  writeFileSync(
    file,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: bench-sim',
      `  cluster: {server: "${serverUrl}", insecure-skip-tls-verify: true}`,
      'users:',
      '- name: agent',
      `  user: {token: ${token}}`,
      'contexts:',
      '- name: bench-sim',
      '  context: {cluster: bench-sim, user: agent}',
      'current-context: bench-sim',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
}
