/**
 * Fills the cluster-specific placeholders of daemonset.yaml and writes the
 * result to stdout:
 *
 *   npm run -s render-manifest -- --dns-ip 10.96.0.10 --image REGISTRY/nodelocal-dns:TAG \
 *     [--local-ip 169.254.20.10] [--cluster-domain cluster.local] [--mode iptables|ipvs] > nodelocal-dns.yaml
 *
 * Plain text substitution, exactly what the sed recipe in docs/install.md
 * does, so the two cannot disagree; what this adds is validation (a bad
 * value exits 2 naming the flag) and a check that nothing is left unfilled.
 * Self-contained (node: modules only) so it builds on its own
 * (scripts/tsconfig.json) without the agent.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { fileURLToPath, pathToFileURL } from 'node:url';

export type Mode = 'iptables' | 'ipvs';

export interface RenderOptions {
  /** Where pods send DNS: kubelet's clusterDNS in IPVS mode (node-cache's default 169.254.20.10). */
  readonly localIp: string;
  /** kube-dns's ClusterIP; the agent also serves on it in iptables mode. Required there, unused in IPVS mode. */
  readonly dnsIp: string | null;
  readonly clusterDomain: string;
  readonly image: string;
  /** kube-proxy's mode: iptables (or nftables) intercepts the ClusterIP; IPVS owns it (kube-ipvs0), so pods are pointed at the local IP instead. */
  readonly mode: Mode;
  /** Extra node labels the DaemonSet requires (beside kubernetes.io/os: linux): a node-by-node switch from node-cache. */
  readonly nodeSelector: readonly (readonly [string, string])[];
}

/** node-cache's placeholder names, so its sed habits carry over; IMAGE is ours. */
export const PLACEHOLDERS = {
  localIp: '__PILLAR__LOCAL__DNS__',
  dnsIp: '__PILLAR__DNS__SERVER__',
  clusterDomain: '__PILLAR__DNS__DOMAIN__',
  image: '__PILLAR__IMAGE__',
} as const;

export const USAGE = `Usage: render-manifest --dns-ip IP --image IMAGE [--local-ip IP] [--cluster-domain DOMAIN] [--mode iptables|ipvs]
                       [--node-selector KEY=VALUE]... [--template FILE]

Writes daemonset.yaml with its placeholders filled to stdout.

  --dns-ip IP            kube-dns's ClusterIP (kubectl -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIP}');
                         required in iptables mode; in IPVS mode, optional: the fail-open target (--fail-open-to)
  --image IMAGE          the agent's image, e.g. registry.example.com/nodelocal-dns:0.1.0
  --local-ip IP          the node-local address pods use (default 169.254.20.10)
  --cluster-domain NAME  the cluster domain (default cluster.local)
  --mode MODE            kube-proxy's mode: iptables (default; also for nftables) or ipvs
  --node-selector K=V    run only on nodes with this label too (repeatable; for switching from node-cache node by node)
  --template FILE        the template (default: daemonset.yaml at the top of the repository)
`;

/** A user error: the CLI prints it and exits 2. */
export class RenderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RenderError';
  }
}

function ipv4Octets(ip: string): number[] {
  return ip.split('.').map(Number);
}

/**
 * Why an address cannot serve pods on a node, or null. Loopback is reachable
 * only from the node's own namespace, not from a pod; the others are not
 * unicast addresses of a host, or (IPv6 link-local) need a zone a pod's
 * resolv.conf cannot carry.
 */
function unusable(ip: string): string | null {
  if (isIP(ip) === 4) {
    const [a, b, c, d] = ipv4Octets(ip) as [number, number, number, number];
    if (a === 0) return 'an unspecified ("this network") address';
    if (a === 127) return 'a loopback address, which pods cannot reach';
    if (a >= 224 && a <= 239) return 'a multicast address';
    if (a === 255 && b === 255 && c === 255 && d === 255) return 'the broadcast address';
    return null;
  }
  // The URL parser writes IPv6 in its canonical form (RFC 5952): 0:0::1 is ::1.
  const v6 = new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  if (v6 === '::') return 'the unspecified address';
  if (v6 === '::1') return 'a loopback address, which pods cannot reach';
  if (v6.startsWith('ff')) return 'a multicast address';
  if (/^fe[89ab]/.test(v6)) return 'an IPv6 link-local address (it needs a zone, which resolv.conf cannot give)';
  return null;
}

function checkIp(flag: string, value: string): string {
  if (isIP(value) === 0) throw new RenderError(`${flag} "${value}": not an IPv4 or IPv6 address`);
  const why = unusable(value);
  if (why !== null) throw new RenderError(`${flag} "${value}": ${why}`);
  return value;
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function checkDomain(value: string): string {
  const d = value.toLowerCase().replace(/\.$/, '');
  if (d === '' || d.length > 253 || !d.split('.').every((l) => LABEL.test(l))) {
    throw new RenderError(`--cluster-domain "${value}": not a DNS name (labels of 1-63 letters, digits or "-", such as cluster.local)`);
  }
  return d;
}

/** A registry/path:tag@digest reference; anything that could break the YAML line or the sed recipe is refused. */
const IMAGE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$/;

function checkImage(value: string): string {
  if (!IMAGE.test(value)) throw new RenderError(`--image "${value}": not an image reference (such as registry.example.com/nodelocal-dns:0.1.0)`);
  return value;
}

/** Label key ([prefix/]name) and value, as the API server checks them; the value may be empty. */
const LABEL_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
const LABEL_PREFIX = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function checkLabel(text: string): readonly [string, string] {
  const eq = text.indexOf('=');
  const key = eq >= 0 ? text.slice(0, eq) : text;
  const value = eq >= 0 ? text.slice(eq + 1) : '';
  const slash = key.lastIndexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : null;
  const name = key.slice(slash + 1);
  const keyOk = LABEL_NAME.test(name) && (prefix === null || (prefix.length <= 253 && LABEL_PREFIX.test(prefix)));
  if (eq < 0 || !keyOk || (value !== '' && !LABEL_NAME.test(value))) {
    throw new RenderError(`--node-selector "${text}": expected KEY=VALUE with a Kubernetes label key and value, such as nodelocal-dns=agent`);
  }
  return [key, value];
}

export interface ParsedArgs {
  readonly options: RenderOptions;
  readonly template: string | null;
}

/** argv (without node and script) -> options, or 'help'. Throws RenderError. */
export function parseArgs(argv: readonly string[]): ParsedArgs | 'help' {
  const raw = new Map<string, string>();
  const selectors: (readonly [string, string])[] = [];
  const known = ['dns-ip', 'image', 'local-ip', 'cluster-domain', 'mode', 'node-selector', 'template'];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') return 'help';
    if (!arg.startsWith('--')) throw new RenderError(`unexpected argument "${arg}"`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    if (!known.includes(name)) throw new RenderError(`unknown flag --${name}`);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) value = argv[++i]!;
    else throw new RenderError(`--${name} needs a value`);
    if (name === 'node-selector') selectors.push(checkLabel(value));
    else if (raw.has(name)) throw new RenderError(`--${name} given twice`);
    else raw.set(name, value);
  }
  const mode = raw.get('mode') ?? 'iptables';
  if (mode !== 'iptables' && mode !== 'ipvs') throw new RenderError(`--mode "${mode}": iptables or ipvs (kube-proxy in nftables mode: iptables)`);
  const localIp = checkIp('--local-ip', raw.get('local-ip') ?? '169.254.20.10');
  const dnsText = raw.get('dns-ip');
  if (dnsText === undefined && mode === 'iptables') {
    throw new RenderError(`--dns-ip is required in iptables mode (kube-dns's ClusterIP: kubectl -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIP}')`);
  }
  const dnsIp = dnsText === undefined ? null : checkIp('--dns-ip', dnsText);
  if (dnsIp !== null && dnsIp === localIp) throw new RenderError(`--dns-ip "${dnsIp}" is the same address as --local-ip`);
  const image = raw.get('image');
  if (image === undefined) throw new RenderError('--image is required (the agent image to run, such as registry.example.com/nodelocal-dns:0.1.0)');
  return {
    options: {
      localIp,
      dnsIp,
      clusterDomain: checkDomain(raw.get('cluster-domain') ?? 'cluster.local'),
      image: checkImage(image),
      mode,
      nodeSelector: selectors,
    },
    template: raw.get('template') ?? null,
  };
}

/** The template with every placeholder filled. Throws RenderError if one is left (a template the recipe does not cover). */
export function render(template: string, o: RenderOptions): string {
  let out = template;
  // IPVS: kube-proxy owns the ClusterIP on kube-ipvs0, so the agent serves on the local IP only (node-cache's recipe).
  // Given, the ClusterIP is where pods' DNS to the local IP goes while no agent listens (fail open).
  if (o.mode === 'ipvs') {
    const failOpen = o.dnsIp === null ? '' : `\n$1- --fail-open-to=${PLACEHOLDERS.dnsIp}`;
    out = out.replace(new RegExp(`^( *)- --localip=${PLACEHOLDERS.localIp},${PLACEHOLDERS.dnsIp}$`, 'gm'), `$1- --localip=${PLACEHOLDERS.localIp}${failOpen}`);
    out = out.replaceAll(`,${PLACEHOLDERS.dnsIp}`, '');
  }
  out = out.replaceAll(PLACEHOLDERS.localIp, o.localIp).replaceAll(PLACEHOLDERS.clusterDomain, o.clusterDomain).replaceAll(PLACEHOLDERS.image, o.image);
  if (o.dnsIp !== null) out = out.replaceAll(PLACEHOLDERS.dnsIp, o.dnsIp);
  if (o.nodeSelector.length > 0) {
    const anchors = [...out.matchAll(/^( *)kubernetes\.io\/os: linux\n/gm)];
    if (anchors.length !== 1) throw new RenderError(`--node-selector: expected one "kubernetes.io/os: linux" line (the DaemonSet's nodeSelector), found ${anchors.length}`);
    const a = anchors[0]!;
    const at = a.index + a[0].length;
    // Quoted: a value such as "true" or "1" must stay a string.
    const lines = o.nodeSelector.map(([k, v]) => `${a[1]!}${k}: "${v}"\n`).join('');
    out = out.slice(0, at) + lines + out.slice(at);
  }
  const left = /__PILLAR__[A-Z_]*__/.exec(out);
  if (left !== null) throw new RenderError(`the template still has ${left[0]} after rendering (line ${out.slice(0, left.index).split('\n').length})`);
  return out;
}

/** daemonset.yaml at the top of the repository, from scripts/ (run by tap) or dist/scripts/ (built). */
export function defaultTemplatePath(): string {
  const candidates = ['../daemonset.yaml', '../../daemonset.yaml'].map((rel) => fileURLToPath(new URL(rel, import.meta.url)));
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}

export interface Io {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  readonly readFile: (path: string) => string;
}

/** The CLI: 0 rendered, 2 bad usage or value, 1 the template could not be read. */
export function main(argv: readonly string[], io: Io): number {
  let parsed: ParsedArgs | 'help';
  try {
    parsed = parseArgs(argv);
  } catch (e) {
    io.err(`render-manifest: ${(e as Error).message} (--help for usage)\n`);
    return 2;
  }
  if (parsed === 'help') {
    io.out(USAGE);
    return 0;
  }
  const path = parsed.template ?? defaultTemplatePath();
  let template: string;
  try {
    template = io.readFile(path);
  } catch (e) {
    io.err(`render-manifest: cannot read the template ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}\n`);
    return 1;
  }
  try {
    io.out(render(template, parsed.options));
  } catch (e) {
    io.err(`render-manifest: ${path}: ${(e as Error).message}\n`);
    return 2;
  }
  return 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = main(process.argv.slice(2), {
    out: (s) => process.stdout.write(s),
    err: (s) => process.stderr.write(s),
    readFile: (p) => readFileSync(p, 'utf8'),
  });
}
