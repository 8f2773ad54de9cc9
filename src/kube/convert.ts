/**
 * API object JSON -> the slim objects of kube/types.ts. This is the one place
 * a raw API object is read; everything returned is a fresh, small object that
 * shares nothing with the parsed JSON, so the raw page or event can be dropped
 * as soon as it is converted.
 *
 * Defensive by contract: input is whatever JSON.parse gave us. A malformed
 * object yields null (the caller counts it and skips it); nothing throws.
 * Fields are read the way CoreDNS reads them (plugin/kubernetes/object).
 */
import { isIP, isIPv4, isIPv6 } from 'node:net';
import type { KindName, KindObjects, ServicePort, SlimEndpoint, SlimEndpointSlice, SlimNamespace, SlimService } from './types.js';

type Json = Readonly<Record<string, unknown>>;

function obj(v: unknown): Json | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : null;
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function arr(v: unknown): readonly unknown[] {
  return Array.isArray(v) ? v : [];
}

/** metadata.namespace / metadata.name of any object; null when the name is missing. */
export function objectKey(raw: unknown): { readonly namespace: string; readonly name: string } | null {
  const meta = obj(obj(raw)?.['metadata']);
  const name = str(meta?.['name']);
  if (name === '') return null;
  return { namespace: str(meta?.['namespace']), name };
}

/** metadata.resourceVersion ('' when absent). */
export function resourceVersionOf(raw: unknown): string {
  return str(obj(obj(raw)?.['metadata'])?.['resourceVersion']);
}

/**
 * Ports of a Service or an EndpointSlice. An entry without a valid port number
 * is dropped on its own (a slice may carry `port: null`, meaning "all ports",
 * which no DNS record can name).
 */
function ports(list: unknown): ServicePort[] {
  const out: ServicePort[] = [];
  for (const item of arr(list)) {
    const p = obj(item);
    const port = p?.['port'];
    if (p === null || typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) continue;
    out.push({ name: str(p['name']), port, protocol: str(p['protocol']) || 'TCP' });
  }
  return out;
}

export function toSlimService(raw: unknown): SlimService | null {
  const key = objectKey(raw);
  const spec = obj(obj(raw)?.['spec']);
  if (key === null || key.namespace === '' || spec === null) return null;
  const base = {
    namespace: key.namespace,
    name: key.name,
    ports: ports(spec['ports']),
    publishNotReadyAddresses: spec['publishNotReadyAddresses'] === true,
  };
  if (spec['type'] === 'ExternalName') {
    const target = str(spec['externalName']).toLowerCase().replace(/\.$/, '');
    if (target === '') return null;
    return { ...base, kind: 'ExternalName', clusterIPs: [], externalName: target };
  }
  const clusterIP = str(spec['clusterIP']);
  if (clusterIP === 'None') return { ...base, kind: 'Headless', clusterIPs: [], externalName: '' };
  // clusterIPs (dual-stack, 1.20+) supersedes clusterIP; older objects only have the latter.
  const listed = arr(spec['clusterIPs']).filter((ip): ip is string => typeof ip === 'string' && isIP(ip) !== 0);
  const clusterIPs = listed.length > 0 ? listed : isIP(clusterIP) !== 0 ? [clusterIP] : [];
  return { ...base, kind: 'ClusterIP', clusterIPs, externalName: '' };
}

export function toSlimEndpointSlice(raw: unknown): SlimEndpointSlice | null {
  const key = objectKey(raw);
  const o = obj(raw);
  if (key === null || key.namespace === '' || o === null) return null;
  const addressType = o['addressType'];
  if (addressType !== 'IPv4' && addressType !== 'IPv6' && addressType !== 'FQDN') return null;
  // Addresses that are not literals of the slice's family would end up in A/AAAA records: drop them.
  const valid = addressType === 'IPv4' ? isIPv4 : addressType === 'IPv6' ? isIPv6 : (a: string) => a !== '';
  const endpoints: SlimEndpoint[] = [];
  for (const item of arr(o['endpoints'])) {
    const e = obj(item);
    if (e === null) continue;
    const addresses = arr(e['addresses']).filter((a): a is string => typeof a === 'string' && valid(a));
    if (addresses.length === 0) continue;
    // discovery.k8s.io/v1: "nil should be interpreted as ready".
    const ready = obj(e['conditions'])?.['ready'] !== false;
    endpoints.push({ addresses, ready, hostname: str(e['hostname']) });
  }
  const labels = obj(obj(o['metadata'])?.['labels']);
  return {
    namespace: key.namespace,
    name: key.name,
    serviceName: str(labels?.['kubernetes.io/service-name']),
    addressType,
    ports: ports(o['ports']),
    endpoints,
  };
}

export function toSlimNamespace(raw: unknown): SlimNamespace | null {
  const key = objectKey(raw);
  return key === null ? null : { name: key.name };
}

type Converter<K extends KindName> = (raw: unknown) => KindObjects[K] | null;

/** The converter for each kind, so a reflector is generic over the kind. */
export const converters: { readonly [K in KindName]: Converter<K> } = {
  services: toSlimService,
  endpointslices: toSlimEndpointSlice,
  namespaces: toSlimNamespace,
};
