/**
 * daemonset.yaml, raw and rendered, field by field against what the agent
 * needs on a node; and scripts/render-manifest.ts (fills every placeholder,
 * agrees with the sed recipe in docs/install.md, refuses bad values with
 * exit 2 naming the flag). The rendered arguments and config file go
 * through the agent's own config loader, so a flag the agent does not know
 * fails here, not on a node.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { parseHostPort } from '../src/addr.js';
import { OPTIONS, loadConfig, parseBytes, parseDuration } from '../src/config.js';
import { type Io, type RenderOptions, PLACEHOLDERS, USAGE, main, parseArgs, render } from '../scripts/render-manifest.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TEMPLATE_PATH = join(ROOT, 'daemonset.yaml');
const TEMPLATE = readFileSync(TEMPLATE_PATH, 'utf8');
const SCRIPT = join(ROOT, 'scripts', 'render-manifest.ts');

// ---------------------------------------------------------------- the shapes we read (only what is checked)

interface Meta { name?: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
interface Obj { apiVersion?: string; kind?: string; metadata?: Meta }
interface PolicyRule { apiGroups?: string[]; resources?: string[]; verbs?: string[]; resourceNames?: string[]; nonResourceURLs?: string[] }
interface ClusterRole extends Obj { rules?: PolicyRule[] }
interface ClusterRoleBinding extends Obj { roleRef?: { apiGroup?: string; kind?: string; name?: string }; subjects?: { kind?: string; name?: string; namespace?: string }[] }
interface ServicePort { name?: string; port?: number; protocol?: string; targetPort?: number | string }
interface Service extends Obj { spec?: { selector?: Record<string, string>; clusterIP?: string; ports?: ServicePort[]; type?: string } }
interface ConfigMap extends Obj { data?: Record<string, string> }
interface HttpGet { host?: string; path?: string; port?: number | string }
interface Probe { httpGet?: HttpGet; initialDelaySeconds?: number; periodSeconds?: number; timeoutSeconds?: number; failureThreshold?: number }
interface EnvVar { name?: string; value?: string; valueFrom?: { fieldRef?: { fieldPath?: string } } }
interface Container {
  name?: string;
  image?: string;
  args?: string[];
  command?: string[];
  env?: EnvVar[];
  ports?: unknown[];
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    runAsUser?: number;
    capabilities?: { add?: string[]; drop?: string[] };
    seccompProfile?: { type?: string };
  };
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  startupProbe?: Probe;
  volumeMounts?: { name?: string; mountPath?: string; readOnly?: boolean; subPath?: string }[];
}
interface Volume { name?: string; hostPath?: { path?: string; type?: string }; configMap?: { name?: string; items?: unknown[] }; emptyDir?: unknown }
interface Toleration { key?: string; operator?: string; effect?: string; value?: string }
interface PodSpec {
  priorityClassName?: string;
  serviceAccountName?: string;
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  shareProcessNamespace?: boolean;
  dnsPolicy?: string;
  enableServiceLinks?: boolean;
  terminationGracePeriodSeconds?: number;
  nodeSelector?: Record<string, string>;
  tolerations?: Toleration[];
  containers?: Container[];
  initContainers?: Container[];
  volumes?: Volume[];
  securityContext?: Record<string, unknown>;
}
interface DaemonSet extends Obj {
  spec?: {
    selector?: { matchLabels?: Record<string, string> };
    updateStrategy?: { type?: string; rollingUpdate?: { maxSurge?: number | string; maxUnavailable?: number | string } };
    minReadySeconds?: number;
    template?: { metadata?: Meta; spec?: PodSpec };
  };
}

function parseDocs(text: string): Obj[] {
  const docs = parseAllDocuments(text);
  const errors = docs.flatMap((d) => d.errors.map((e) => e.message));
  if (errors.length > 0) throw new Error(`YAML errors: ${errors.join('; ')}`);
  return docs.map((d) => d.toJS() as Obj | null).filter((d): d is Obj => d !== null);
}

function one<T extends Obj>(docs: readonly Obj[], kind: string, name: string): T {
  const found = docs.filter((d) => d.kind === kind && d.metadata?.name === name);
  if (found.length !== 1) throw new Error(`expected one ${kind}/${name}, found ${found.length}`);
  return found[0] as T;
}

/** The one container, its pod spec and the DaemonSet. */
function agentOf(docs: readonly Obj[]): { ds: DaemonSet; pod: PodSpec; c: Container } {
  const ds = one<DaemonSet>(docs, 'DaemonSet', 'nodelocal-dns');
  const pod = ds.spec?.template?.spec ?? {};
  const c = pod.containers?.[0] ?? {};
  return { ds, pod, c };
}

/** --name=value args (the manifest's spelling) as [name, value]; a bare --flag is [name, null]. */
function argPairs(args: readonly string[]): [string, string | null][] {
  return args.map((a) => {
    if (!a.startsWith('--')) throw new Error(`argument "${a}" is not a --flag`);
    const eq = a.indexOf('=');
    return eq < 0 ? [a.slice(2), null] : [a.slice(2, eq), a.slice(eq + 1)];
  });
}

function argValue(c: Container, name: string): string | undefined {
  const hit = argPairs(c.args ?? []).filter(([n]) => n === name);
  if (hit.length > 1) throw new Error(`--${name} given ${hit.length} times`);
  return hit[0]?.[1] ?? undefined;
}

/** Kubernetes' $(VAR) expansion of args from the container's env ($$ escapes); undefined names are left as they are, as the kubelet does. */
function expand(text: string, env: Record<string, string>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => (m === '$$' ? '$' : env[name!] ?? m));
}

type AttributeMap = readonly { readonly baseName: string; readonly type: string }[];

/** The generated model of a Kubernetes type (client-node's OpenAPI models), or null for scalars, IntOrString and maps. */
function modelOf(type: string): AttributeMap | null {
  const cls = (k8s as unknown as Record<string, unknown>)[type];
  if (typeof cls !== 'function' || !('getAttributeTypeMap' in cls)) return null;
  return (cls as { getAttributeTypeMap(): AttributeMap }).getAttributeTypeMap();
}

/**
 * What the API server would reject or silently drop: fields the OpenAPI
 * model does not have (a typo such as readOnlyRootFileSystem is dropped
 * without a word by kubectl apply --validate=false) and scalars of the
 * wrong type.
 */
function schemaErrors(v: unknown, type: string, path: string): string[] {
  const list = /^Array<(.+)>$/.exec(type);
  if (list !== null) return Array.isArray(v) ? v.flatMap((x, i) => schemaErrors(x, list[1]!, `${path}[${i}]`)) : [`${path}: not a list`];
  if (type === 'string' || type === 'number' || type === 'boolean') return typeof v === type ? [] : [`${path}: ${JSON.stringify(v)} is not a ${type}`];
  if (type === 'IntOrString') return typeof v === 'string' || typeof v === 'number' ? [] : [`${path}: not an int or string`];
  if (type.startsWith('{ [key: string]: string')) {
    return v !== null && typeof v === 'object' && Object.values(v).every((x) => typeof x === 'string') ? [] : [`${path}: not a map of strings`];
  }
  const model = modelOf(type);
  if (model === null) return [];
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return [`${path}: not an object (${type})`];
  return Object.entries(v).flatMap(([k, child]) => {
    const a = model.find((x) => x.baseName === k);
    return a === undefined ? [`${path}.${k}: no such field in ${type}`] : schemaErrors(child, a.type, `${path}.${k}`);
  });
}

/**
 * Paths (KIND/NAME:a.b.0.c) of every key with one of these names, at any
 * depth; `allowed` paths (after the colon, as written) are left out.
 */
function keysNamed(docs: readonly Obj[], names: readonly string[], allowed: readonly string[] = []): string[] {
  const found: string[] = [];
  const walk = (v: unknown, path: string, where: string): void => {
    if (v === null || typeof v !== 'object') return;
    for (const [k, child] of Object.entries(v)) {
      const p = path === '' ? k : `${path}.${k}`;
      if (names.includes(k) && !allowed.includes(p)) found.push(`${where}:${p}`);
      walk(child, p, where);
    }
  };
  for (const d of docs) walk(d, '', `${d.kind}/${d.metadata?.name}`);
  return found;
}

/** Memory quantity ("192Mi") in MiB. */
function mib(q: string | undefined): number {
  const bytes = q === undefined ? undefined : parseBytes(q);
  if (bytes === undefined) throw new Error(`memory quantity "${q}" is not in Ki/Mi/Gi`);
  return bytes / 2 ** 20;
}

const BASE: RenderOptions = { localIp: '169.254.20.10', dnsIp: '10.96.0.10', clusterDomain: 'cluster.local', image: 'registry.example.com/nodelocal-dns:0.1.0', mode: 'iptables', nodeSelector: [] };

/**
 * Measured with bench/agent-memory.ts (RSS MiB, docs/install.md "Resources").
 * Requests cover the typical node, the limit the worst case with room.
 */
const MEASURED_MIB = { typical1kServicesFullCache: 154, worst10kServicesByteBudgetRelist: 304 };
/** The cache byte budget those measurements were taken with. */
const MEASURED_CACHE_MEMORY = '64Mi';
/** After --shutdown-grace: the snapshot, then the teardown (two iptables-restore calls, each waiting at most 5 s for the xtables lock). */
const AFTER_GRACE_BUDGET_S = 1 + 2 * 5;

// ---------------------------------------------------------------- every variant: raw template and rendered ones

const variants: { name: string; text: string; rendered: RenderOptions | null }[] = [
  { name: 'raw template', text: TEMPLATE, rendered: null },
  { name: 'rendered, iptables mode', text: render(TEMPLATE, BASE), rendered: BASE },
  { name: 'rendered, IPVS mode', text: render(TEMPLATE, { ...BASE, mode: 'ipvs', dnsIp: null }), rendered: { ...BASE, mode: 'ipvs', dnsIp: null } },
  {
    name: 'rendered, IPv6',
    text: render(TEMPLATE, { ...BASE, localIp: 'fd00::10', dnsIp: 'fd00:10:96::a', clusterDomain: 'k8s.example.internal' }),
    rendered: { ...BASE, localIp: 'fd00::10', dnsIp: 'fd00:10:96::a', clusterDomain: 'k8s.example.internal' },
  },
];

for (const v of variants) {
  t.test(`${v.name}: structure`, async (t) => {
    const docs = parseDocs(v.text);
    t.same(docs.map((d) => `${d.kind}/${d.metadata?.name}`).sort(), [
      'ClusterRole/nodelocal-dns',
      'ClusterRoleBinding/nodelocal-dns',
      'ConfigMap/nodelocal-dns',
      'DaemonSet/nodelocal-dns',
      'Service/kube-dns-upstream',
      'Service/nodelocal-dns-metrics',
      'ServiceAccount/nodelocal-dns',
    ], 'exactly these objects');
    for (const d of docs) t.same(schemaErrors(d, `V1${d.kind}`, `${d.kind}/${d.metadata?.name}`), [], `${d.kind}/${d.metadata?.name} fits the API's schema`);
    for (const d of docs) {
      if (d.kind === 'ClusterRole' || d.kind === 'ClusterRoleBinding') t.equal(d.metadata?.namespace, undefined, `${d.kind} is cluster-scoped`);
      else t.equal(d.metadata?.namespace, 'kube-system', `${d.kind}/${d.metadata?.name} in kube-system`);
    }

    // RBAC: list and watch (the agent never gets one object by name), exactly, on exactly these three resources.
    const role = one<ClusterRole>(docs, 'ClusterRole', 'nodelocal-dns');
    const grants = (role.rules ?? []).flatMap((r) => {
      t.equal(r.resourceNames, undefined, 'no resourceNames');
      t.equal(r.nonResourceURLs, undefined, 'no nonResourceURLs');
      t.same([...(r.verbs ?? [])].sort(), ['list', 'watch'], `verbs of ${(r.resources ?? []).join(',')}`);
      return (r.apiGroups ?? []).flatMap((g) => (r.resources ?? []).map((res) => `${g}/${res}`));
    });
    t.same(grants.sort(), ['/namespaces', '/services', 'discovery.k8s.io/endpointslices'], 'resources: services, namespaces, endpointslices');
    const binding = one<ClusterRoleBinding>(docs, 'ClusterRoleBinding', 'nodelocal-dns');
    t.same(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'nodelocal-dns' });
    t.same(binding.subjects, [{ kind: 'ServiceAccount', name: 'nodelocal-dns', namespace: 'kube-system' }]);
    one<Obj>(docs, 'ServiceAccount', 'nodelocal-dns');

    // kube-dns-upstream: a ClusterIP Service (kubelet gives env variables only for those) on the kube-dns pods, 53 UDP and TCP.
    const up = one<Service>(docs, 'Service', 'kube-dns-upstream');
    t.same(up.spec?.selector, { 'k8s-app': 'kube-dns' });
    t.not(up.spec?.clusterIP, 'None', 'not headless');
    t.ok(up.spec?.type === undefined || up.spec.type === 'ClusterIP', 'type ClusterIP');
    t.same((up.spec?.ports ?? []).map((p) => `${p.protocol}/${p.port}->${p.targetPort}`).sort(), ['TCP/53->53', 'UDP/53->53']);

    const { ds, pod, c } = agentOf(docs);
    const podLabels = ds.spec?.template?.metadata?.labels ?? {};
    t.same(ds.spec?.selector?.matchLabels, { 'k8s-app': 'nodelocal-dns' });
    for (const [k, val] of Object.entries(ds.spec?.selector?.matchLabels ?? {})) t.equal(podLabels[k], val, `pod label ${k}`);

    // Headless metrics Service on the agents (port 9253).
    const metrics = one<Service>(docs, 'Service', 'nodelocal-dns-metrics');
    t.equal(metrics.spec?.clusterIP, 'None', 'headless');
    t.same(metrics.spec?.ports?.map((p) => [p.port, p.targetPort, p.protocol]), [[9253, 9253, 'TCP']]);
    for (const [k, val] of Object.entries(metrics.spec?.selector ?? {})) t.equal(podLabels[k], val, `metrics selector ${k} matches the pods`);
    t.ok(Object.keys(metrics.spec?.selector ?? {}).length > 0, 'metrics Service selects something');

    // The pod.
    t.equal(pod.hostNetwork, true, 'hostNetwork');
    t.equal(pod.dnsPolicy, 'Default', 'dnsPolicy Default: the node resolvers, never the cluster DNS');
    t.equal(pod.priorityClassName, 'system-node-critical');
    t.equal(pod.serviceAccountName, 'nodelocal-dns');
    t.not(pod.enableServiceLinks, false, 'service links on: KUBE_DNS_UPSTREAM_SERVICE_HOST/_PORT come through them');
    t.not(pod.hostPID, true);
    t.not(pod.hostIPC, true);
    t.same(pod.nodeSelector, { 'kubernetes.io/os': 'linux' });
    t.same(pod.tolerations, [
      { key: 'CriticalAddonsOnly', operator: 'Exists' },
      { effect: 'NoExecute', operator: 'Exists' },
      { effect: 'NoSchedule', operator: 'Exists' },
    ], "node-cache's tolerations");
    t.equal(pod.initContainers, undefined, 'no init containers');
    t.equal(pod.containers?.length, 1, 'one container');

    // Rolling update: surge one, never unavailable. The new pod binds beside the old one (SO_REUSEPORT,
    // test/handover.test.ts) and starts warm from the old one's periodic snapshot (test/snapshot.test.ts).
    t.same(ds.spec?.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    t.equal(pod.hostNetwork, true, 'host network: the surge pod shares the node\'s addresses with the old one');
    t.not(argValue(c, 'reuse-port'), 'false', 'SO_REUSEPORT not turned off (the surge pod binds beside the old one)');
    t.notOk((c.args ?? []).includes('--no-reuse-port'), 'no --no-reuse-port');
    const interval = argValue(c, 'cache-snapshot-interval');
    t.ok(interval !== undefined && (parseDuration(interval) ?? 0) > 0, `periodic snapshots on (--cache-snapshot-interval ${interval}): the surge pod loads the running one's`);
    t.ok((ds.spec?.minReadySeconds ?? 0) >= 10, 'the old pod stays until the new one has been ready a while (its probe may reach the old agent until it binds)');

    // No ports anywhere: with hostNetwork they are host ports and would keep the surge pod off its node.
    for (const ctr of [...(pod.containers ?? []), ...(pod.initContainers ?? [])]) t.ok(ctr.ports === undefined || ctr.ports.length === 0, `no ports on ${ctr.name}`);
    t.same(keysNamed(docs, ['hostPort', 'containerPort', 'ports'], ['spec.ports']), [], 'no hostPort, containerPort or ports anywhere but in the Services');

    // Security: not privileged; only the capabilities it needs; read-only root.
    const sc = c.securityContext ?? {};
    t.equal(sc.privileged, false, 'not privileged');
    t.same(keysNamed(docs, ['privileged']).filter((p) => p !== 'DaemonSet/nodelocal-dns:spec.template.spec.containers.0.securityContext.privileged'), [], 'no other privileged field');
    t.equal(sc.allowPrivilegeEscalation, false);
    t.equal(sc.readOnlyRootFilesystem, true);
    t.same(sc.capabilities?.drop, ['ALL']);
    t.same([...(sc.capabilities?.add ?? [])].sort(), ['NET_ADMIN', 'NET_BIND_SERVICE', 'NET_RAW'], 'NET_ADMIN, NET_BIND_SERVICE (port 53), NET_RAW (iptables-legacy)');
    t.equal(sc.seccompProfile?.type, 'RuntimeDefault');
    t.equal(c.command, undefined, "the image's entrypoint runs");

    // Probes: liveness /health and readiness /ready on --health-port, on the local IP.
    const healthPort = Number(argValue(c, 'health-port'));
    t.equal(healthPort, 8080, '--health-port 8080');
    const local = v.rendered === null ? PLACEHOLDERS.localIp : v.rendered.localIp;
    t.same(c.livenessProbe?.httpGet, { host: local, path: '/health', port: healthPort });
    t.same(c.readinessProbe?.httpGet, { host: local, path: '/ready', port: healthPort });
    t.ok((c.livenessProbe?.failureThreshold ?? 3) * (c.livenessProbe?.periodSeconds ?? 10) >= 30, 'liveness tolerates 30 s of silence (a GC pause or a slow API list is not a reason to restart DNS)');

    // hostPaths: exactly the xtables lock and the snapshot directory.
    const hostPaths = (pod.volumes ?? []).filter((vol) => vol.hostPath !== undefined);
    t.same(hostPaths.map((vol) => [vol.hostPath?.path, vol.hostPath?.type]).sort(), [
      ['/run/xtables.lock', 'FileOrCreate'],
      ['/var/lib/nodelocal-dns', 'DirectoryOrCreate'],
    ]);
    const mountOf = (volName: string | undefined): { mountPath?: string; readOnly?: boolean; subPath?: string } | undefined => c.volumeMounts?.find((m) => m.name === volName);
    const lock = hostPaths.find((vol) => vol.hostPath?.path === '/run/xtables.lock');
    t.same(mountOf(lock?.name), { name: lock?.name, mountPath: '/run/xtables.lock' }, 'xtables lock mounted where iptables looks, writable');
    const state = hostPaths.find((vol) => vol.hostPath?.path === '/var/lib/nodelocal-dns');
    const stateMount = mountOf(state?.name);
    t.not(stateMount?.readOnly, true, 'snapshot directory writable');
    const snapshot = argValue(c, 'cache-snapshot') ?? '';
    t.equal(posix.dirname(snapshot), stateMount?.mountPath, '--cache-snapshot is a file in the hostPath mount');
    t.notOk(snapshot.startsWith('/run/') || snapshot.startsWith('/dev/shm'), 'snapshot on disk, not tmpfs (charged to the memory limit)');

    // The config file: the ConfigMap, mounted whole (edits propagate), named by --config.
    const cm = one<ConfigMap>(docs, 'ConfigMap', 'nodelocal-dns');
    const cmVolume = (pod.volumes ?? []).find((vol) => vol.configMap?.name === 'nodelocal-dns');
    t.ok(cmVolume, 'the ConfigMap is a volume');
    const cmMount = mountOf(cmVolume?.name);
    t.equal(cmMount?.readOnly, true);
    t.equal(cmMount?.subPath, undefined, 'no subPath: ConfigMap edits reach the pod');
    const configArg = argValue(c, 'config') ?? '';
    t.equal(posix.dirname(configArg), cmMount?.mountPath, '--config is in the ConfigMap mount');
    t.ok(cm.data?.[posix.basename(configArg)] !== undefined, '--config names a key of the ConfigMap');

    // Resources: requests and a memory limit that cover what was measured; no CPU limit.
    const res = c.resources ?? {};
    t.ok(res.requests?.['cpu'] !== undefined, 'cpu request');
    t.ok(mib(res.requests?.['memory']) >= MEASURED_MIB.typical1kServicesFullCache, `memory request covers the typical node (${MEASURED_MIB.typical1kServicesFullCache} MiB)`);
    t.ok(mib(res.limits?.['memory']) >= MEASURED_MIB.worst10kServicesByteBudgetRelist * 1.15, `memory limit 15% over the worst case measured (${MEASURED_MIB.worst10kServicesByteBudgetRelist} MiB)`);
    t.equal(res.limits?.['cpu'], undefined, 'no CPU limit (throttling adds latency)');

    // Shutdown fits in the grace period.
    const grace = parseDuration(argValue(c, 'shutdown-grace') ?? '');
    t.ok(grace !== undefined && grace > 0, '--shutdown-grace given');
    t.ok((pod.terminationGracePeriodSeconds ?? 30) * 1000 >= (grace ?? Infinity) + AFTER_GRACE_BUDGET_S * 1000, 'terminationGracePeriodSeconds covers the grace, the snapshot and the teardown');

    // Every $(VAR) in the args is defined in the env (the kubelet leaves unknown ones as literal text).
    const envNames = new Set((c.env ?? []).map((e) => e.name));
    for (const a of c.args ?? []) for (const m of a.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) t.ok(envNames.has(m[1]), `$(${m[1]}) in "${a}" is defined`);
    t.same(c.env?.find((e) => e.name === 'HOST_IP')?.valueFrom, { fieldRef: { fieldPath: 'status.hostIP' } });
    // --node-name's default, for the pod watch of --metrics-by-namespace (this node's pods only).
    t.equal(c.env?.find((e) => e.name === 'MALLOC_ARENA_MAX')?.value, '2', 'glibc malloc arenas capped (worker threads)');
    // NODE_OPTIONS as the container gets it: node refuses to start (exit 9) on a flag NODE_OPTIONS does not allow.
    const nodeOptions = c.env?.find((e) => e.name === 'NODE_OPTIONS')?.value ?? '';
    t.match(nodeOptions, /--max-semi-space-size=\d+/, 'the main thread young generation capped');
    // Churn that grows a default young generation to 32 MiB, then its size (the flag keeps it at 2 x 1 MiB).
    const churn = "let k = []; for (let i = 0; i < 3e6; i++) { k.push({ i }); if (k.length > 2e5) k = []; } require('v8').getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size";
    const semi = spawnSync(process.execPath, ['-p', churn], {
      env: { ...process.env, NODE_OPTIONS: nodeOptions }, encoding: 'utf8', timeout: 10_000,
    });
    t.equal(semi.status, 0, `node starts with NODE_OPTIONS="${nodeOptions}": ${semi.stderr}`);
    t.ok(Number(semi.stdout) > 0 && Number(semi.stdout) <= 4 * 1024 * 1024, `new space after churn ${semi.stdout.trim()} bytes: the flag took effect`);
    t.same(c.env?.find((e) => e.name === 'NODE_NAME')?.valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } }, 'NODE_NAME from the downward API');
    t.equal(argValue(c, 'metrics-by-namespace'), undefined, '--metrics-by-namespace off by default (it needs the extra pods RBAC)');

    // The four values, or their placeholders.
    if (v.rendered === null) {
      t.equal(c.image, PLACEHOLDERS.image);
      t.equal(argValue(c, 'localip'), `${PLACEHOLDERS.localIp},${PLACEHOLDERS.dnsIp}`);
    } else {
      t.notMatch(v.text, /__PILLAR__/, 'no placeholder left');
      t.equal(c.image, v.rendered.image);
      const want = v.rendered.mode === 'iptables' ? `${v.rendered.localIp},${v.rendered.dnsIp}` : v.rendered.localIp;
      t.equal(argValue(c, 'localip'), want, `${v.rendered.mode}: --localip`);
    }
  });
}

// ---------------------------------------------------------------- the optional pods RBAC of --metrics-by-namespace

const PODS_RBAC_PATH = join(ROOT, 'deploy', 'namespace-metrics-rbac.yaml');

t.test('deploy/namespace-metrics-rbac.yaml: list/watch on pods, nothing else, for the agent\'s ServiceAccount', async (t) => {
  const docs = parseDocs(readFileSync(PODS_RBAC_PATH, 'utf8'));
  t.same(docs.map((d) => `${d.kind}/${d.metadata?.name}`).sort(), ['ClusterRole/nodelocal-dns-pods', 'ClusterRoleBinding/nodelocal-dns-pods'], 'exactly these objects');
  for (const d of docs) {
    t.same(schemaErrors(d, `V1${d.kind}`, `${d.kind}/${d.metadata?.name}`), [], `${d.kind}/${d.metadata?.name} fits the API's schema`);
    t.equal(d.metadata?.namespace, undefined, `${d.kind} is cluster-scoped`);
  }
  const role = one<ClusterRole>(docs, 'ClusterRole', 'nodelocal-dns-pods');
  t.same(role.rules, [{ apiGroups: [''], resources: ['pods'], verbs: ['list', 'watch'] }], 'list and watch pods, nothing else');
  const binding = one<ClusterRoleBinding>(docs, 'ClusterRoleBinding', 'nodelocal-dns-pods');
  t.same(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'nodelocal-dns-pods' });
  // The same subject as the main binding, i.e. the DaemonSet's ServiceAccount.
  const main = parseDocs(TEMPLATE);
  const sa = agentOf(main).pod.serviceAccountName;
  t.same(binding.subjects, one<ClusterRoleBinding>(main, 'ClusterRoleBinding', 'nodelocal-dns').subjects, 'bound to the subject of the main binding');
  t.same(binding.subjects, [{ kind: 'ServiceAccount', name: sa, namespace: 'kube-system' }], 'the DaemonSet\'s ServiceAccount');
  // The main ClusterRole stays without pods: the flag is opt-in, and so is the read.
  const grants = (one<ClusterRole>(main, 'ClusterRole', 'nodelocal-dns').rules ?? []).flatMap((r) => r.resources ?? []);
  t.notOk(grants.includes('pods'), 'daemonset.yaml grants no pods');
  t.match(TEMPLATE, /deploy\/namespace-metrics-rbac\.yaml/, 'daemonset.yaml points at it');
  t.match(readFileSync(join(ROOT, 'docs', 'install.md'), 'utf8'), /deploy\/namespace-metrics-rbac\.yaml/, 'docs/install.md tells how to apply it');
});

// ---------------------------------------------------------------- rendered args and config file through the agent's own loader

t.test('rendered: the args and the config file load in the agent (src/config.ts)', async (t) => {
  const known = new Set(OPTIONS.map((o) => o.flag));
  for (const hostIp of ['192.0.2.7', '2001:db8::7']) {
    for (const v of variants.filter((x) => x.rendered !== null)) {
      const docs = parseDocs(v.text);
      const { c } = agentOf(docs);
      const cm = one<ConfigMap>(docs, 'ConfigMap', 'nodelocal-dns');
      const podEnv: Record<string, string> = { HOST_IP: hostIp };
      const args = (c.args ?? []).map((a) => expand(a, podEnv));
      // Every one, as the agent gets it: a flag it does not know exits 2 on every node (a crash loop).
      const usable = argPairs(args).map(([name, value]) => {
        t.ok(known.has(name), `--${name} is a flag of the agent`);
        return value === null ? `--${name}` : `--${name}=${value}`;
      });
      const metricsAddr = argPairs(args).find(([n]) => n === 'metrics-listen-address')?.[1] ?? '';
      t.same(parseHostPort(metricsAddr, undefined), { host: hostIp, port: 9253 }, `--metrics-listen-address ${metricsAddr}`);
      const files: Record<string, string> = {};
      for (const [key, text] of Object.entries(cm.data ?? {})) files[`/etc/nodelocal-dns/${key}`] = text;
      const { config } = loadConfig(usable, {
        // What kubelet injects for the kube-dns-upstream Service.
        env: { KUBE_DNS_UPSTREAM_SERVICE_HOST: '10.96.0.53', KUBE_DNS_UPSTREAM_SERVICE_PORT: '53' },
        readFile: (p) => {
          const text = files[p];
          if (text === undefined) throw Object.assign(new Error(`no such file ${p}`), { code: 'ENOENT' });
          return text;
        },
      });
      const r = v.rendered!;
      const listen = r.mode === 'iptables' ? [r.localIp, r.dnsIp] : [r.localIp];
      t.same(config.listen, listen.map((host) => ({ host, port: 53 })), `${v.name}: listens on ${listen.join(', ')}:53`);
      t.same(config.clusterUpstream, { host: '10.96.0.53', port: 53 }, 'cluster DNS from the kube-dns-upstream environment');
      t.equal(config.clusterDomain, r.clusterDomain);
      t.equal(config.kube, true, 'the fallback watch is on');
      t.equal(config.kubeconfig, '', 'in-cluster credentials');
      t.ok(config.cacheMemoryBytes <= parseBytes(MEASURED_CACHE_MEMORY)!, `cache byte budget within the ${MEASURED_CACHE_MEMORY} the memory limit was measured with`);
      t.equal(config.shutdownGraceMs, 5000);
    }
  }
  // Turning on --metrics-by-namespace (the commented arg) takes the node name from the env the DaemonSet sets.
  {
    const { c } = agentOf(parseDocs(variants[1]!.text));
    t.match(TEMPLATE, /^\s*# - --metrics-by-namespace$/m, 'the opt-in flag is shown, commented out, in the args');
    const args = argPairs(c.args ?? []).filter(([n]) => known.has(n) && n !== 'config').map(([n, val]) => (val === null ? `--${n}` : `--${n}=${val}`));
    const env = { KUBE_DNS_UPSTREAM_SERVICE_HOST: '10.96.0.53', NODE_NAME: 'node-7' };
    const on = loadConfig([...args.map((a) => expand(a, { HOST_IP: '192.0.2.7' })), '--metrics-by-namespace'], { env }).config;
    t.equal(on.metricsByNamespace, true);
    t.equal(on.nodeName, 'node-7', 'node name from NODE_NAME');
  }
  // Without the Service environment the agent refuses to start (--require-cluster-dns), instead of a silent local mode.
  const { c } = agentOf(parseDocs(variants[1]!.text));
  const bare = argPairs(c.args ?? []).filter(([n]) => known.has(n) && n !== 'config').map(([n, val]) => (val === null ? `--${n}` : `--${n}=${val}`));
  t.throws(() => loadConfig(bare, { env: {} }), /kube-dns-upstream|cluster DNS/i, 'no KUBE_DNS_UPSTREAM_SERVICE_HOST: refused at start');
});

// ---------------------------------------------------------------- render-manifest

function run(argv: string[], readFile: Io['readFile'] = (p) => readFileSync(p, 'utf8')): { code: number; out: string; err: string } {
  let out = '';
  let err = '';
  const code = main(argv, { out: (s) => { out += s; }, err: (s) => { err += s; }, readFile });
  return { code, out, err };
}

const IMAGE = ['--image', 'registry.example.com/nodelocal-dns:0.1.0'];

t.test('render-manifest: fills every placeholder', async (t) => {
  const r = run(['--dns-ip', '10.96.0.10', ...IMAGE]);
  t.equal(r.code, 0, r.err);
  t.equal(r.err, '');
  t.equal(r.out, render(TEMPLATE, BASE), 'defaults: 169.254.20.10, cluster.local, iptables');
  t.notMatch(r.out, /__PILLAR__/);
  for (const p of Object.values(PLACEHOLDERS)) t.match(TEMPLATE, p, `the template uses ${p}`);

  const custom = run(['--dns-ip=10.0.0.10', '--local-ip=169.254.25.10', '--cluster-domain', 'Example.Internal.', '--mode', 'ipvs', ...IMAGE]);
  t.equal(custom.code, 0, custom.err);
  const { c } = agentOf(parseDocs(custom.out));
  t.equal(argValue(c, 'localip'), '169.254.25.10', 'IPVS: the local IP only, even with --dns-ip');
  t.equal(argValue(c, 'fail-open-to'), '10.0.0.10', 'IPVS with --dns-ip: the ClusterIP is the fail-open target');
  t.equal(c.livenessProbe?.httpGet?.host, '169.254.25.10');
  t.match(custom.out, /clusterDomain: example\.internal\n/, 'domain lower-cased, trailing dot dropped');
  t.equal(custom.out.match(/10\.0\.0\.10/g)?.length, 1, 'and the ClusterIP appears nowhere else in IPVS mode');
  t.equal(argValue(agentOf(parseDocs(run(['--dns-ip=10.0.0.10', ...IMAGE]).out)).c, 'fail-open-to'), undefined, 'never in iptables mode');

  const v6 = run(['--local-ip', 'fd00::10', '--dns-ip', 'fd00:10:96::a', ...IMAGE]);
  t.equal(v6.code, 0, v6.err);
  t.equal(argValue(agentOf(parseDocs(v6.out)).c, 'localip'), 'fd00::10,fd00:10:96::a', 'IPv6');

  const ipvs = run(['--mode', 'ipvs', ...IMAGE]);
  t.equal(ipvs.code, 0, 'IPVS mode needs no --dns-ip');
  t.equal(argValue(agentOf(parseDocs(ipvs.out)).c, 'fail-open-to'), undefined, 'and without it, no fail-open');

  const help = run(['--help']);
  t.equal(help.code, 0);
  t.equal(help.out, USAGE);
});

t.test('render-manifest: --node-selector adds labels to the nodeSelector', async (t) => {
  const r = run(['--dns-ip', '10.96.0.10', ...IMAGE, '--node-selector', 'nodelocal-dns=agent', '--node-selector=example.com/dns-ready=true']);
  t.equal(r.code, 0, r.err);
  t.same(agentOf(parseDocs(r.out)).pod.nodeSelector, { 'kubernetes.io/os': 'linux', 'nodelocal-dns': 'agent', 'example.com/dns-ready': 'true' }, 'values stay strings');
  for (const bad of ['nodelocal-dns', '=agent', 'a b=c', 'k=v v', 'Bad_Prefix.com/x=y', `${'k'.repeat(64)}=v`]) {
    const e = run(['--dns-ip', '10.96.0.10', ...IMAGE, '--node-selector', bad]);
    t.equal(e.code, 2, `--node-selector ${bad}`);
    t.match(e.err, `--node-selector "${bad}"`);
  }
  t.throws(() => render('nodeSelector: {}\n', { ...BASE, nodeSelector: [['a', 'b']] }), /expected one "kubernetes.io\/os: linux" line.*found 0/);
});

t.test('render-manifest: bad values exit 2 naming the flag and the value, and print nothing', async (t) => {
  const cases: [string[], RegExp][] = [
    [['--dns-ip', '10.96.0.300', ...IMAGE], /--dns-ip "10\.96\.0\.300": not an IPv4 or IPv6 address/],
    [['--dns-ip', 'kube-dns', ...IMAGE], /--dns-ip "kube-dns": not an IPv4 or IPv6 address/],
    [['--dns-ip', '10.96.0.10', '--local-ip', '169.254.20', ...IMAGE], /--local-ip "169\.254\.20": not an IPv4/],
    [['--dns-ip', '10.96.0.10', '--local-ip', '127.0.0.1', ...IMAGE], /--local-ip "127\.0\.0\.1": a loopback address/],
    [['--dns-ip', '10.96.0.10', '--local-ip', '0:0::1', ...IMAGE], /--local-ip "0:0::1": a loopback address/],
    [['--dns-ip', '10.96.0.10', '--local-ip', '0.0.0.0', ...IMAGE], /--local-ip "0\.0\.0\.0": an unspecified/],
    [['--dns-ip', '::', ...IMAGE], /--dns-ip "::": the unspecified address/],
    [['--dns-ip', '10.96.0.10', '--local-ip', '224.0.0.251', ...IMAGE], /multicast/],
    [['--dns-ip', 'FF02::FB', ...IMAGE], /--dns-ip "FF02::FB": a multicast/],
    [['--dns-ip', '255.255.255.255', ...IMAGE], /broadcast/],
    [['--dns-ip', '10.96.0.10', '--local-ip', 'fe80::10', ...IMAGE], /--local-ip "fe80::10": an IPv6 link-local address/],
    [['--dns-ip', '169.254.20.10', ...IMAGE], /--dns-ip "169\.254\.20\.10" is the same address as --local-ip/],
    [[...IMAGE], /--dns-ip is required in iptables mode/],
    [['--dns-ip', '10.96.0.10'], /--image is required/],
    [['--dns-ip', '10.96.0.10', '--image', 'nodelocal dns'], /--image "nodelocal dns": not an image reference/],
    [['--dns-ip', '10.96.0.10', '--image', 'a|b'], /--image "a\|b"/],
    [['--dns-ip', '10.96.0.10', '--mode', 'userspace', ...IMAGE], /--mode "userspace": iptables or ipvs/],
    [['--dns-ip', '10.96.0.10', '--cluster-domain', 'cluster_local', ...IMAGE], /--cluster-domain "cluster_local": not a DNS name/],
    [['--dns-ip', '10.96.0.10', '--cluster-domain', '-x.local', ...IMAGE], /--cluster-domain "-x\.local"/],
    [['--dns-ip', '10.96.0.10', '--cluster-domain', '.', ...IMAGE], /--cluster-domain "\."/],
    [['--dns-ip', '10.96.0.10', '--dns-ip', '10.96.0.11', ...IMAGE], /--dns-ip given twice/],
    [['--dns-ip', '10.96.0.10', '--localip', '1.2.3.4', ...IMAGE], /unknown flag --localip/],
    [['--dns-ip', '10.96.0.10', '--image'], /--image needs a value/],
    [['--dns-ip', '--image', 'x'], /--dns-ip needs a value/],
    [['10.96.0.10'], /unexpected argument "10\.96\.0\.10"/],
  ];
  for (const [argv, want] of cases) {
    const r = run(argv);
    t.equal(r.code, 2, `exit 2: ${argv.join(' ')}`);
    t.match(r.err, want, argv.join(' '));
    t.match(r.err, /^render-manifest: .*\(--help for usage\)\n$/, 'one line');
    t.equal(r.out, '', 'nothing on stdout');
  }
  t.throws(() => parseArgs(['--dns-ip', 'nope']), { name: 'RenderError' });
});

t.test('render-manifest: the template', async (t) => {
  const missing = run(['--dns-ip', '10.96.0.10', ...IMAGE, '--template', '/nonexistent/daemonset.yaml']);
  t.equal(missing.code, 1);
  t.match(missing.err, /cannot read the template \/nonexistent\/daemonset\.yaml: ENOENT/);
  const unknown = run(['--dns-ip', '10.96.0.10', ...IMAGE, '--template', 'x.yaml'], () => 'a: 1\nb: __PILLAR__UPSTREAM__SERVERS__\n');
  t.equal(unknown.code, 2);
  t.match(unknown.err, /x\.yaml: the template still has __PILLAR__UPSTREAM__SERVERS__ after rendering \(line 2\)/);
  t.equal(unknown.out, '');
});

const HAVE_SED = spawnSync('sh', ['-c', 'command -v sed'], { timeout: 5000 }).status === 0;

t.test('render-manifest agrees with the sed recipe in docs/install.md', { skip: HAVE_SED ? false : 'no sed on this machine' }, async (t) => {
  const doc = readFileSync(join(ROOT, 'docs', 'install.md'), 'utf8');
  const seds = doc.split('\n').filter((l) => l.startsWith('sed ')).map((l) => l.replace(/ > nodelocal-dns\.yaml$/, ''));
  t.equal(seds.length, 2, 'two sed lines: iptables mode, then IPVS mode');
  const env = { ...process.env, LOCAL_IP: '169.254.20.10', DNS_IP: '10.96.0.10', DOMAIN: 'cluster.local', IMAGE: 'registry.example.com/nodelocal-dns:0.1.0' };
  // The IPVS line renders no fail-open (a line of its own is more than a portable sed one-liner adds): as without --dns-ip.
  const modes: RenderOptions[] = [BASE, { ...BASE, mode: 'ipvs', dnsIp: null }];
  for (const [i, line] of seds.entries()) {
    const r = spawnSync('sh', ['-c', line], { cwd: ROOT, env, encoding: 'utf8', timeout: 10_000 });
    t.equal(r.status, 0, r.stderr);
    t.equal(r.stdout, render(TEMPLATE, modes[i]!), `sed line ${i + 1} (${modes[i]!.mode}) gives the same bytes`);
  }
});

t.test('render-manifest as a program: from source, and built by scripts/tsconfig.json (npm run render-manifest)', async (t) => {
  const loader = import.meta.resolve('@tapjs/typescript/import');
  const bad = spawnSync(process.execPath, [`--import=${loader}`, SCRIPT, '--dns-ip', '10.96.0.300', ...IMAGE], { encoding: 'utf8', timeout: 30_000 });
  t.equal(bad.status, 2, 'exit status 2');
  t.match(bad.stderr, /--dns-ip "10\.96\.0\.300": not an IPv4 or IPv6 address/);
  t.equal(bad.stdout, '');

  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  // A copy of the repository's layout: <root>/daemonset.yaml and <root>/dist/scripts/render-manifest.js.
  const root = mkdtempSync(join(tmpdir(), 'nldns-render-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const build = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'scripts', 'tsconfig.json'), '--outDir', join(root, 'dist')], { encoding: 'utf8', timeout: 80_000 });
  t.equal(build.status, 0, `scripts/tsconfig.json builds: ${build.stdout}${build.stderr}`);
  const built = join(root, 'dist', 'scripts', 'render-manifest.js');
  t.ok(existsSync(built), 'dist/scripts/render-manifest.js');
  writeFileSync(join(root, 'daemonset.yaml'), TEMPLATE);
  const good = spawnSync(process.execPath, [built, '--dns-ip', '10.96.0.10', ...IMAGE], { encoding: 'utf8', timeout: 30_000 });
  t.equal(good.status, 0, good.stderr);
  t.equal(good.stdout, render(TEMPLATE, BASE));
});


// ---------------------------------------------------------------- review: the kube-dns ConfigMap, as node-cache mounts it

t.test('the kube-dns ConfigMap reaches --kube-dns-config-dir: an optional, whole-directory, read-only volume (node-cache parity)', async (t) => {
  // node-cache's nodelocaldns.yaml mounts ConfigMap kube-dns (optional: true) at /etc/kube-dns, and the README
  // promises the agent reads and watches stubDomains/upstreamNameservers there "as node-cache reads them".
  // Without the volume the directory is empty in the container and an admin's kube-dns stubDomains are ignored.
  for (const v of variants.filter((x) => x.rendered !== null)) {
    const docs = parseDocs(v.text);
    const { pod, c } = agentOf(docs);
    const known = new Set(OPTIONS.map((o) => o.flag));
    const args = argPairs((c.args ?? []).map((a) => expand(a, { HOST_IP: '192.0.2.7' })))
      .filter(([n]) => known.has(n) && n !== 'config')
      .map(([n, val]) => (val === null ? `--${n}` : `--${n}=${val}`));
    const dir = loadConfig(args, { env: { KUBE_DNS_UPSTREAM_SERVICE_HOST: '10.96.0.53' } }).config.kubeDnsConfigDir;
    t.not(dir, '', `${v.name}: --kube-dns-config-dir is on`);
    const vol = (pod.volumes ?? []).find((x) => x.configMap?.name === 'kube-dns');
    t.ok(vol, `${v.name}: ConfigMap kube-dns is a volume`);
    t.equal((vol?.configMap as { optional?: boolean } | undefined)?.optional, true, `${v.name}: optional (CoreDNS clusters have no kube-dns ConfigMap)`);
    const mount = c.volumeMounts?.find((m) => m.name === vol?.name);
    t.equal(mount?.mountPath, dir, `${v.name}: mounted at --kube-dns-config-dir (${dir})`);
    t.equal(mount?.readOnly, true, `${v.name}: read-only`);
    t.equal(mount?.subPath, undefined, `${v.name}: no subPath, so edits reach the running agent`);
  }
});

// ---------------------------------------------------------------- review: liveness during an upgrade's overlap, on a node

const AGENT_MAIN = join(ROOT, 'dist', 'src', 'main.js');
const OVERLAP_NS = `nlmanifest-${process.pid}`;
const overlapSkip = (() => {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  if (!existsSync(AGENT_MAIN)) return 'dist/src/main.js missing (npx tsc -p tsconfig.json)';
  for (const cmd of ['ip', 'iptables-legacy-restore', 'flock', 'curl']) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`], { timeout: 5000 }).status !== 0) return `no ${cmd}`;
  }
  return false;
})();

t.test('upgrade overlap: while the surge pod\'s agent is still starting, the liveness probe on the shared address does not fail the running agent', { skip: overlapSkip }, async (t) => {
  // Kubelet probes /health on LOCAL_IP:8080 for both pods. The new agent binds that port first thing (SO_REUSEPORT)
  // and steers every new connection to itself, so from then on the OLD pod's liveness probe is answered by the new
  // agent, which says 503 until it serves. A start that takes longer than failureThreshold x periodSeconds (here
  // 3 x 10 s: the interception step waits on the xtables lock kube-proxy holds during its syncs, iptables-save of a
  // large nat table) gets the old, healthy pod restarted by kubelet. Liveness must not fail while a process is
  // merely starting: the starting agent should answer /health 200 (and /ready 503).
  const docs = parseDocs(variants[1]!.text);
  const { c } = agentOf(docs);
  const cm = one<ConfigMap>(docs, 'ConfigMap', 'nodelocal-dns');
  const dir = mkdtempSync(join(tmpdir(), 'nldns-overlap-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'config.yaml'), cm.data?.['config.yaml'] ?? '');
  writeFileSync(join(dir, 'resolv.conf'), 'nameserver 127.0.0.1\n'); // never asked: no query is sent in this test
  writeFileSync(join(dir, 'xtables.lock'), '');
  // The bind mount below needs its mount point. iptables creates /run/xtables.lock (empty, 0600) the first time it
  // takes the lock, so a machine where iptables has not run since boot has none: make it as iptables would.
  if (!existsSync('/run/xtables.lock')) writeFileSync('/run/xtables.lock', '', { mode: 0o600, flag: 'a' });
  const hostIp = '192.0.2.7';
  const ns = (args: string[]): void => {
    const r = spawnSync('ip', ['-n', OVERLAP_NS, ...args], { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) throw new Error(`ip -n ${OVERLAP_NS} ${args.join(' ')}: ${r.stderr}`);
  };
  spawnSync('ip', ['netns', 'del', OVERLAP_NS], { timeout: 10_000 });
  const made = spawnSync('ip', ['netns', 'add', OVERLAP_NS], { encoding: 'utf8', timeout: 10_000 });
  t.equal(made.status, 0, made.stderr);
  t.teardown(() => { spawnSync('ip', ['netns', 'del', OVERLAP_NS], { timeout: 10_000 }); });
  ns(['link', 'set', 'lo', 'up']);
  ns(['link', 'add', 'h0', 'type', 'bridge']); // the node's NIC, carrying HOST_IP
  ns(['addr', 'add', `${hostIp}/24`, 'dev', 'h0']);
  ns(['link', 'set', 'h0', 'up']);

  // The manifest's args and env as the container gets them; paths into the temporary directory, and test-only
  // overrides: a bridge (no dummy driver here), a resolv.conf of our own, and iptables-legacy with a private
  // xtables lock (bind-mounted inside the namespace's mount namespace) that the test can hold.
  const podEnv: Record<string, string> = { HOST_IP: hostIp, NODE_NAME: 'node-1' };
  for (const e of c.env ?? []) if (e.value !== undefined) podEnv[e.name!] = e.value;
  const args = (c.args ?? []).map((a) => expand(a, podEnv))
    .map((a) => (a.startsWith('--config=') ? `--config=${join(dir, 'config.yaml')}` : a))
    .map((a) => (a.startsWith('--cache-snapshot=') ? `--cache-snapshot=${join(dir, 'cache.snapshot')}` : a));
  args.push('--interface-kind=bridge', `--resolv-conf=${join(dir, 'resolv.conf')}`, '--firewall=iptables-legacy');
  const env = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...podEnv, KUBE_DNS_UPSTREAM_SERVICE_HOST: '127.0.0.1', KUBE_DNS_UPSTREAM_SERVICE_PORT: '5300' };
  const { spawn } = await import('node:child_process');
  const { createInterface } = await import('node:readline');
  const children: import('node:child_process').ChildProcess[] = [];
  t.teardown(async () => {
    for (const ch of children) if (ch.exitCode === null && ch.signalCode === null) ch.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    for (const ch of children) if (ch.exitCode === null && ch.signalCode === null) ch.kill('SIGKILL');
  });
  const startAgent = (name: string): { lines: string[]; wait: (re: RegExp, ms: number) => Promise<string | null> } => {
    const script = `mount --bind "$0" /run/xtables.lock && exec "$@"`;
    const ch = spawn('ip', ['netns', 'exec', OVERLAP_NS, 'sh', '-c', script, join(dir, 'xtables.lock'), process.execPath, AGENT_MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(ch);
    const lines: string[] = [];
    const waiters = new Set<() => void>();
    for (const s of [ch.stdout!, ch.stderr!]) createInterface({ input: s }).on('line', (l) => { lines.push(`${name}: ${l}`); for (const w of waiters) w(); });
    const wait = (re: RegExp, ms: number): Promise<string | null> => new Promise((resolve) => {
      const check = (): boolean => {
        const hit = lines.find((l) => re.test(l));
        if (hit === undefined) return false;
        waiters.delete(check2); clearTimeout(timer); resolve(hit); return true;
      };
      const check2 = (): void => { check(); };
      const timer = setTimeout(() => { waiters.delete(check2); resolve(null); }, ms);
      if (!check()) waiters.add(check2);
    });
    return { lines, wait };
  };
  const probe = (path: string): string => {
    const r = spawnSync('ip', ['netns', 'exec', OVERLAP_NS, 'curl', '-s', '-m', '2', '-o', '/dev/null', '-w', '%{http_code}', `http://169.254.20.10:8080${path}`], { encoding: 'utf8', timeout: 5000 });
    return r.stdout;
  };

  const old = startAgent('old');
  t.ok(await old.wait(/"msg":"started"/, 20_000), `the running agent started: ${old.lines.slice(-5).join('\n')}`);
  t.equal(probe('/health'), '200', 'the running agent is live');

  // Kube-proxy holding the xtables lock (one of its syncs): the new agent's interception step waits on it.
  const holder = spawn('flock', [join(dir, 'xtables.lock'), 'sleep', '20'], { stdio: 'ignore' });
  children.push(holder);
  await new Promise((r) => setTimeout(r, 300));
  const surge = startAgent('new');
  t.ok(await surge.wait(/ops http listening.*169\.254\.20\.10:8080/, 20_000), `the new agent bound the probe port: ${surge.lines.slice(-5).join('\n')}`);
  const health: string[] = [];
  for (let i = 0; i < 3; i++) {
    health.push(probe('/health'));
    await new Promise((r) => setTimeout(r, 300));
  }
  t.same(health, ['200', '200', '200'], `liveness on the shared address while the new agent starts (old pod alive): ${health.join(' ')}`);
  holder.kill('SIGTERM');
});

// ---------------------------------------------------------------- review: what the dashboard's legends and the alerts' texts say

interface DashboardTarget { expr: string; legendFormat?: string }
interface Dashboard { panels: { title: string; type: string; targets?: DashboardTarget[] }[] }
interface AlertRule { alert?: string; expr: string; annotations?: Record<string, string> }

const DASHBOARD = JSON.parse(readFileSync(join(ROOT, 'deploy', 'grafana-dashboard.json'), 'utf8')) as Dashboard;
const ALERTS = (parseAllDocuments(readFileSync(join(ROOT, 'deploy', 'prometheus-rules.yaml'), 'utf8'))[0]!.toJS() as { groups: { rules: AlertRule[] }[] }).groups.flatMap((g) => g.rules);

/** The label lists of every `by (...)` aggregation in a PromQL expression, or null when it aggregates nothing. */
function byLists(expr: string): string[][] | null {
  const aggs = [...expr.matchAll(/\b(?:sum|count|max|min|avg|topk|bottomk)\s*(?:by\s*\(([^)]*)\))?\s*\(/g)];
  if (aggs.length === 0) return null;
  return aggs.map((m) => (m[1] ?? '').split(',').map((s) => s.trim()).filter((s) => s !== ''));
}

/** The label_replace(v, "dst", "replacement", "src", "regex") calls of an expression, innermost first (their trailing arguments come first in the text). */
function labelReplaces(expr: string): { dst: string; replacement: string; src: string; regex: string }[] {
  return [...expr.matchAll(/,\s*"([^"]*)"\s*,\s*"([^"]*)"\s*,\s*"([^"]*)"\s*,\s*"([^"]*)"\s*\)/g)].map((m) => ({ dst: m[1]!, replacement: m[2]!, src: m[3]!, regex: m[4]! }));
}

/** The legend Grafana draws for one series of a target: the labels the aggregation keeps, then each label_replace, as Prometheus applies them. */
function legendOf(target: DashboardTarget, series: Record<string, string>): string {
  const kept = byLists(target.expr)?.[0];
  const labels: Record<string, string> = kept === undefined ? { ...series } : Object.fromEntries(kept.filter((k) => k in series).map((k) => [k, series[k]!]));
  for (const r of labelReplaces(target.expr)) {
    const m = new RegExp(`^(?:${r.regex})$`).exec(labels[r.src] ?? '');
    if (m !== null) labels[r.dst] = r.replacement.replace(/\$(\d)/g, (_, i: string) => m[Number(i)] ?? '');
  }
  return (target.legendFormat ?? '').replace(/\{\{\s*([A-Za-z_]+)\s*\}\}/g, (_, l: string) => labels[l] ?? '');
}

t.test('dashboard: the address-family panel names IPv4 and IPv6, not CoreDNS\'s family numbers read as IP versions', async (t) => {
  // coredns_dns_requests_total's family label is "1" for an IPv4 client and "2" for IPv6 (CoreDNS's numbering).
  // A legend of "IPv{{family}}" draws "IPv1" and "IPv2": an operator reads the IPv6 share as something else.
  const { SERVER_COUNTERS, addressFamilyIndex } = await import('../src/server/stats.js');
  const families = [...new Set(SERVER_COUNTERS.defs.filter((d) => d.name === 'coredns_dns_requests_total').map((d) => d.labels?.['family'] ?? ''))];
  t.same(families.length, 2, 'two family values');
  const panel = DASHBOARD.panels.find((p) => (p.targets ?? []).some((x) => /sum by \([^)]*\bfamily\b/.test(x.expr)));
  t.ok(panel, 'a panel splits requests by family');
  const target = panel!.targets!.find((x) => /\bfamily\b/.test(x.expr))!;
  for (const [client, version] of [['192.0.2.1', 'IPv4'], ['2001:db8::1', 'IPv6'], ['::ffff:192.0.2.1', 'IPv4']] as const) {
    const family = families[addressFamilyIndex(client)]!;
    const legend = legendOf(target, { family, proto: 'udp', instance: 'node-1' });
    t.match(legend, new RegExp(`\\b${version}\\b`), `a client at ${client} (family="${family}") is drawn as ${version}: "${legend}"`);
    t.notMatch(legend, /IPv[12]\b/, `no "IPv1"/"IPv2": "${legend}"`);
  }
});

t.test('dashboard: every {{label}} a legend draws is one its query keeps', async (t) => {
  for (const p of DASHBOARD.panels) {
    for (const x of p.targets ?? []) {
      const lists = byLists(x.expr);
      if (lists === null) continue; // no aggregation: every label of the series is there
      const kept = new Set([...lists.flat(), ...labelReplaces(x.expr).map((r) => r.dst)]);
      for (const m of (x.legendFormat ?? '').matchAll(/\{\{\s*([A-Za-z_]+)\s*\}\}/g)) {
        t.ok(kept.has(m[1]!) && m[1] !== 'le', `panel "${p.title}": {{${m[1]}}} is kept by "${x.expr.replace(/\s+/g, ' ')}"`);
      }
    }
  }
});

t.test('alerts: every $labels.X an annotation names survives the expression\'s aggregation', async (t) => {
  t.ok(ALERTS.length > 10, `${ALERTS.length} alerts`);
  for (const r of ALERTS) {
    const lists = byLists(r.expr);
    const kept = lists === null ? null : lists.reduce((a, b) => a.filter((l) => b.includes(l)));
    for (const [k, text] of Object.entries(r.annotations ?? {})) {
      for (const m of text.matchAll(/\$labels\.([A-Za-z_]+)/g)) {
        t.ok(kept === null || (kept.includes(m[1]!) && m[1] !== 'le'), `${r.alert} ${k}: $labels.${m[1]} is kept (${kept === null ? 'no aggregation' : `by ${kept.join(', ')}`})`);
      }
    }
  }
});

t.test('alerts: refused client TCP connections say which limit refused them (the two have different causes and remedies)', async (t) => {
  // nodelocal_tcp_refused_total{reason}: connection_limit (every --max-tcp-connections slot busy: a flood) or
  // client_limit (one address at --max-tcp-per-client: a pod, or hostNetwork pods sharing the node's address) or
  // fd_limit (the process near its open-file limit).
  // An alert summed over both that names only the first sends the operator after the wrong knob.
  const src = readFileSync(join(ROOT, 'src', 'server', 'tcp-stats.ts'), 'utf8');
  const reasons = [...src.matchAll(/name: REFUSED, help: REFUSED_HELP, labels: \{ reason: '([a-z_]+)' \}/g)].map((m) => m[1]!);
  t.same(reasons.sort(), ['client_limit', 'connection_limit', 'fd_limit'], 'the three reasons the agent counts');
  const rules = ALERTS.filter((r) => r.expr.includes('nodelocal_tcp_refused_total'));
  t.ok(rules.length > 0, 'an alert on refused connections');
  for (const r of rules) {
    const selects = /nodelocal_tcp_refused_total\{[^}]*reason\s*=\s*"/.test(r.expr);
    const keeps = (byLists(r.expr) ?? [['reason']]).every((l) => l.includes('reason'));
    t.ok(selects || keeps, `${r.alert}: one reason selected, or reason kept by the aggregation: ${r.expr.trim()}`);
    if (!selects) t.match(r.annotations?.['summary'] ?? '', /\$labels\.reason/, `${r.alert}: the summary names the reason`);
    for (const reason of reasons) t.match(r.annotations?.['description'] ?? '', reason, `${r.alert}: the description explains ${reason}`);
  }
});

// ---------------------------------------------------------------- review: README's flag table and config-file example against the agent

/** README's "### Flags" table: each row's flags (in order) and its default cell, backticks dropped. */
function readmeFlagRows(): { flags: string[]; def: string; row: string }[] {
  const md = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = md.slice(md.indexOf('### Flags'), md.indexOf('### Config file'));
  return section.split('\n').filter((l) => l.startsWith('| `--')).map((row) => {
    const cells = row.split(/(?<!\\)\|/).map((c) => c.trim());
    return { flags: [...cells[1]!.matchAll(/`--([a-z0-9-]+)/g)].map((m) => m[1]!), def: cells[2]!.replace(/`/g, ''), row };
  });
}

t.test("README's flag table: every flag of the agent, each with the agent's default, and no flag the agent does not take", async (t) => {
  const rows = readmeFlagRows();
  t.ok(rows.length > 40, `${rows.length} rows`);
  const inTable = new Set(rows.flatMap((r) => r.flags));
  const isBool = (flag: string): boolean => OPTIONS.some((o) => o.flag === flag && o.kind === 'bool');
  for (const f of inTable) t.ok(OPTIONS.some((o) => o.flag === f) || (f.startsWith('no-') && isBool(f.slice(3))), `--${f} in the table is a flag of the agent`);
  for (const o of OPTIONS) {
    t.ok(inTable.has(o.flag), `--${o.flag} is in the table`);
    if (o.def === undefined) continue;
    for (const r of rows.filter((x) => x.flags.includes(o.flag))) {
      // "a / b" defaults pair with "--x / --y" rows; otherwise the cell holds the one default.
      const named = r.flags.filter((f) => !f.startsWith('no-'));
      const parts = r.def.split(' / ');
      const cell = parts.length === named.length ? parts[named.indexOf(o.flag)]! : r.def;
      const tokens = cell.split(/[\s(),]+/).filter((x) => x !== '');
      const want = o.kind === 'bool' ? (o.def === 'true' ? ['true', 'on'] : ['false', 'off']) : [o.def];
      t.ok(tokens.some((x) => want.includes(x)), `--${o.flag}: default ${o.def} in the table (cell "${cell}")`);
    }
  }
});

t.test("README's config file example loads in the agent as written", async (t) => {
  const md = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = md.slice(md.indexOf('### Config file'));
  const yaml = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
  t.ok(yaml !== undefined, 'a YAML example');
  const files: Record<string, string> = { '/etc/nodelocal-dns/example.yaml': yaml! };
  const { config } = loadConfig(['--config', '/etc/nodelocal-dns/example.yaml', '--kube-dns-config-dir', ''], {
    // It sets requireClusterDns: the Service environment kubelet injects.
    env: { KUBE_DNS_UPSTREAM_SERVICE_HOST: '10.96.0.53' },
    readFile: (p) => {
      const text = files[p];
      if (text === undefined) throw Object.assign(new Error(`no such file ${p}`), { code: 'ENOENT' });
      return text;
    },
  });
  t.ok(config.listen.length > 0 && config.stubDomains.length > 0, 'listen addresses and a stub domain from the file');
});

t.test('alerts: a held xtables lock (errortype="iptables_lock", retried at the next check) does not raise the setup-errors alert by itself', async (t) => {
  // kube-proxy holds /run/xtables.lock through every sync; on a large cluster one takes longer than our -w 5, and the
  // agent counts iptables_lock (node-cache's label, which node-cache logs at info and retries) and tries again at the
  // next check. Rules that stay missing raise NodeLocalDNSInterceptionMissing; an alert on every lock wait is noise.
  const src = readFileSync(join(ROOT, 'src', 'iface', 'setup-counters.ts'), 'utf8');
  t.match(src, /errortype: 'iptables_lock'/, 'the agent counts lock waits apart');
  const rules = ALERTS.filter((r) => r.expr.includes('coredns_nodecache_setup_errors_total'));
  t.ok(rules.length > 0, 'an alert on setup errors');
  for (const r of rules) t.match(r.expr, /coredns_nodecache_setup_errors_total\{[^}]*errortype\s*!=\s*"iptables_lock"/, `${r.alert} leaves iptables_lock out: ${r.expr.trim()}`);
  t.ok(ALERTS.some((r) => /nodelocal_interception_active\s*==\s*0/.test(r.expr)), 'rules that stay missing are alerted on by themselves');
});

t.test('alerts: a refused reload alerts for as long as it stands, not for the window after it (a state, not a counter\'s increase)', async (t) => {
  // increase(nodelocal_config_reloads_total{result="refused"}[10m]) > 0 resolves 10 minutes after the refusal,
  // with the files still holding what the next start of the pod refuses (test/main.test.ts: the gauge stays 1
  // until a reload is applied).
  const rules = ALERTS.filter((r) => /nodelocal_config_reload/.test(r.expr));
  t.ok(rules.length > 0, 'an alert on refused reloads');
  for (const r of rules) {
    t.match(r.expr, /nodelocal_config_reload_refused\s*(==\s*1|>\s*0)/, `${r.alert} is on the state: ${r.expr.trim()}`);
    t.notMatch(r.expr, /increase\(/, `${r.alert}: no increase() window to fall out of`);
  }
});

t.test('one scrape per agent and a reaper for orphans: the pods carry the prometheus.io annotations and the metrics Service none; the pause container is PID 1', async (t) => {
  for (const v of variants) {
    const docs = parseDocs(v.text);
    const annotated = docs.filter((d) => {
      const own = d.metadata?.annotations?.['prometheus.io/scrape'];
      const tpl = (d as DaemonSet).spec?.template?.metadata?.annotations?.['prometheus.io/scrape'];
      return own === 'true' || tpl === 'true';
    });
    t.same(
      annotated.map((d) => `${d.kind}/${d.metadata?.name}`),
      ['DaemonSet/nodelocal-dns'],
      `${v.name}: annotation-based scraping finds each agent once (the pods), not also through the headless Service`,
    );
    t.equal(agentOf(docs).pod.shareProcessNamespace, true, `${v.name}: pause reaps what a killed process group leaves (node is PID 1 in the image)`);
  }
});

// ---------------------------------------------------------------- review: RBAC is exactly what the agent asks the API server

t.test('RBAC: every (resource, verb) the two ClusterRoles grant is one the agent uses against a real API, and every one it uses is granted', { skip: existsSync(AGENT_MAIN) ? false : 'dist/src/main.js missing (npx tsc -p tsconfig.json)' }, async (t) => {
  // Least privilege: a verb granted but never used is read access an attacker holding the pod's token gets for
  // nothing. The built agent's requests are watched on the fake API server (the fallback view and, with
  // --metrics-by-namespace, this node's pods): a list is GET on a collection, a watch is GET ?watch=1 on it, a
  // `get` would be GET on one named object. Local mode: no DNS is sent anywhere.
  const { FakeApiServer, podJson } = await import('../testkit/fake-apiserver.js');
  const { writeKubeconfig } = await import('../testkit/cluster.js');
  const { spawn } = await import('node:child_process');
  const fake = new FakeApiServer({ token: 'rbac-token' });
  await fake.start();
  t.teardown(() => fake.close());
  fake.put('pods', podJson('team-a', 'web-1', { nodeName: 'node-a', podIP: '127.0.0.2' }));
  const kubeconfig = writeKubeconfig(fake.url, 'rbac-token');
  t.teardown(() => rmSync(posix.dirname(kubeconfig), { recursive: true, force: true }));
  const resolvConf = join(posix.dirname(kubeconfig), 'resolv.conf');
  writeFileSync(resolvConf, 'nameserver 127.0.0.254\n'); // never asked: no query is sent in this test
  const agent = spawn(process.execPath, [
    AGENT_MAIN, '--listen', '127.0.31.9:5398', '--io', 'dgram', '--health-port', '0', '--metrics-listen-address', 'off',
    '--resolv-conf', resolvConf, '--kube-dns-config-dir', '', '--kubeconfig', kubeconfig, '--metrics-by-namespace', '--node-name', 'node-a',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  agent.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  const exited = new Promise((r) => agent.once('exit', r));
  t.teardown(async () => {
    if (agent.exitCode === null && agent.signalCode === null) agent.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (agent.exitCode === null && agent.signalCode === null) agent.kill('SIGKILL');
  });
  const kinds = ['services', 'endpointslices', 'namespaces', 'pods'] as const;
  for (let i = 0; i < 200 && !kinds.every((k) => fake.seen(k, true) > 0); i++) await new Promise((r) => setTimeout(r, 50));
  for (const k of kinds) t.ok(fake.seen(k, false) > 0 && fake.seen(k, true) > 0, `${k}: listed, then watched (${stderr.split('\n').slice(-3).join(' ')})`);
  const group = (kind: string): string => (kind === 'endpointslices' ? 'discovery.k8s.io' : '');
  const used = new Set(fake.requests.map((r) => (r.kind === null ? 'a request on no collection (a get, or another path)' : `${group(r.kind)}/${r.kind} ${r.watch ? 'watch' : 'list'}`)));
  const roles = [one<ClusterRole>(parseDocs(TEMPLATE), 'ClusterRole', 'nodelocal-dns'), one<ClusterRole>(parseDocs(readFileSync(PODS_RBAC_PATH, 'utf8')), 'ClusterRole', 'nodelocal-dns-pods')];
  const granted = new Set(roles.flatMap((role) => (role.rules ?? []).flatMap((r) => (r.apiGroups ?? []).flatMap((g) => (r.resources ?? []).flatMap((res) => (r.verbs ?? []).map((v) => `${g}/${res} ${v}`))))));
  t.same([...used].sort(), [...granted].filter((g) => used.has(g)).sort(), 'every request the agent made is granted');
  t.same([...granted].sort(), [...used].sort(), 'every grant is used: no verb the agent never sends');
});

t.test("the ConfigMap's commented examples (kube-dns stubDomains, upstreamNameservers) load in the agent once uncommented, as an operator would", async (t) => {
  const cm = one<ConfigMap>(parseDocs(variants[1]!.text), 'ConfigMap', 'nodelocal-dns');
  const text = cm.data?.['config.yaml'] ?? '';
  // The commented lines that are YAML (a key, or an indented line under one), uncommented; prose comments stay.
  const lines = text.split('\n');
  const examples = lines.filter((l) => /^# (\w+:|\s+\S)/.test(l) && !/^# [A-Z(]/.test(l));
  t.ok(examples.length >= 3, `examples found: ${examples.join(' | ')}`);
  const uncommented = lines.map((l) => (examples.includes(l) ? l.slice(2) : l)).join('\n');
  const { config } = loadConfig(['--config', '/etc/nodelocal-dns/config.yaml', '--kube-dns-config-dir', ''], {
    env: { KUBE_DNS_UPSTREAM_SERVICE_HOST: '10.96.0.53' },
    readFile: () => uncommented,
  });
  t.same(config.stubDomains.map((d) => d.zone), ['consul.local'], 'the stub domain example');
  t.ok(config.upstreamNameservers.length === 2, 'the upstreamNameservers example');
});
