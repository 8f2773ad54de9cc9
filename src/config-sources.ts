/**
 * Where raw settings come from before validation (config.ts): the command
 * line, the --config file (YAML or JSON, camelCase keys, stubDomains), and
 * the kube-dns ConfigMap's stubDomains and upstreamNameservers. Also the
 * size and duration spellings every source shares.
 */
import { isMap, isScalar, parse as parseYaml, parseDocument } from 'yaml';
import { formatHostPort, parseHostPort, portLikeLastGroup } from './addr.js';
import type { StubDomain } from './config-types.js';
import { ConfigError, OPTIONS } from './config-options.js';
import { nameToWire } from './dns/name.js';
import { isTlsAddress } from './upstream/tls-address.js';
import type { ServerAddress } from './upstream/types.js';

/** A flag's config-file key: cache-size -> cacheSize. */
export function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

/** Raw settings as strings (list options as arrays), before validation. */
export type Raw = Map<string, string | string[]>;

/** "64Mi", "64MiB", "512Ki", "1Gi", or a bare number of bytes. */
export function parseBytes(text: string): number | undefined {
  const m = /^(\d+)\s*(Ki|Mi|Gi|KiB|MiB|GiB)?$/.exec(text.trim());
  if (m === null) return undefined;
  const unit = m[2] === undefined ? 1 : m[2].startsWith('K') ? 1024 : m[2].startsWith('M') ? 1024 ** 2 : 1024 ** 3;
  return Number(m[1]) * unit;
}

/** "500ms", "2s", "1m", "1m30s", or a bare number of seconds. */
export function parseDuration(text: string): number | undefined {
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    const unit = m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 3_600_000;
    total += Number(m[1]) * unit;
    matched = re.lastIndex;
  }
  return matched === s.length && s.length > 0 ? Math.round(total) : undefined;
}

/** Flags (argv without node and script) into raw settings; ConfigError on unknown flags or missing values. */
export function parseFlags(argv: readonly string[]): { raw: Raw; help: boolean; version: boolean } {
  const raw: Raw = new Map();
  let help = false;
  let version = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') { help = true; continue; }
    if (arg === '--version') { version = true; continue; }
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument "${arg}" (flags start with --; see --help)`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    const spec = OPTIONS.find((o) => o.flag === name);
    // --no-X turns a boolean X off (--no-kube).
    if (spec === undefined && name.startsWith('no-') && eq < 0) {
      const positive = OPTIONS.find((o) => o.flag === name.slice(3) && o.kind === 'bool');
      if (positive !== undefined) {
        raw.set(positive.flag, 'false');
        continue;
      }
    }
    if (spec === undefined) throw new ConfigError(`unknown flag --${name} (see --help)`);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (spec.kind === 'bool' && (i + 1 >= argv.length || argv[i + 1]!.startsWith('--'))) value = 'true';
    else if (i + 1 < argv.length) value = argv[++i]!;
    else throw new ConfigError(`--${name} needs a value`);
    if (spec.kind === 'list') {
      const prev = raw.get(name);
      raw.set(name, [...(Array.isArray(prev) ? prev : []), value]);
    } else raw.set(name, value);
  }
  return { raw, help, version };
}

/** Takes one warning about a setting (the configuration is used, and the warning logged at start and on reload). */
export type Warn = (warning: string) => void;

/** A config file's settings into raw settings. `stubDomains` (a map zone -> [servers]) is kept apart. */
export function parseConfigFile(path: string, text: string): { raw: Raw; stubDomains: StubDomain[]; warnings: string[] } {
  let doc: unknown;
  try {
    doc = parseYaml(text); // YAML 1.2 is a superset of JSON: one parser for both
  } catch (e) {
    throw new ConfigError(`config file ${path}: ${(e as Error).message.split('\n')[0]}${sourceAt(text, (e as { linePos?: { line: number; col: number }[] }).linePos?.[0])}`);
  }
  if (doc === null || doc === undefined) doc = {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`config file ${path}: expected a mapping of settings`);
  const raw: Raw = new Map();
  const stubDomains: StubDomain[] = [];
  const spellings = new Map<string, string>();
  const unknown: string[] = [];
  const warnings: string[] = [];
  const warn: Warn = (w) => warnings.push(`config file ${path}: ${w}`);
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    if (key === 'stubDomains') {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        throw new ConfigError(`config file ${path}: stubDomains must map a zone to a list of servers`);
      }
      for (const [zone, servers] of Object.entries(value as Record<string, unknown>)) {
        if (!Array.isArray(servers) || servers.length === 0) throw new ConfigError(`config file ${path}: stubDomains.${zone} must be a non-empty list of IP[:PORT]`);
        stubDomains.push(onceEach(spellings, stubDomain(`stubDomains.${zone}`, zone, servers.map(String), warn), zone, `config file ${path}: stubDomains`));
      }
      continue;
    }
    const spec = OPTIONS.find((o) => camel(o.flag) === key && o.flag !== 'config');
    if (spec === undefined) {
      unknown.push(`"${key}"`);
      continue;
    }
    if (spec.kind === 'list') {
      const items: unknown[] = Array.isArray(value) ? value : [value];
      for (const item of items) {
        if (typeof item !== 'string' && typeof item !== 'number') {
          throw new ConfigError(`config file ${path}: ${key}: each item must be a string such as "127.0.0.1:53", got ${JSON.stringify(item)}`);
        }
      }
      raw.set(spec.flag, items.map(String));
    } else if (value === null || typeof value === 'object') {
      throw new ConfigError(`config file ${path}: ${key} must be a single value, got ${JSON.stringify(value)}`);
    } else if (spec.kind === 'bool' && typeof value !== 'boolean') {
      // YAML says `yes` is a string and 1 a number: neither is a boolean, and guessing hides typos.
      throw new ConfigError(`config file ${path}: ${key} must be true or false, got ${JSON.stringify(value)}`);
    } else if (spec.kind === 'string' && typeof value !== 'string' && !NUMERIC_TEXT.has(spec.flag)) {
      // YAML reads `interfaceName: 0123` as the number 123: turned back into text, it is not what was written.
      throw new ConfigError(`config file ${path}: ${key} must be a string (quote it), got ${JSON.stringify(value)}`);
    } else raw.set(spec.flag, String(value));
  }
  // Every typo at once: an operator fixing one at a time would restart (or reload) once per key.
  if (unknown.length > 0) throw new ConfigError(`config file ${path}: unknown setting${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}`);
  return { raw, stubDomains, warnings };
}

/** The text a YAML error points at (a duplicate key: that key and its value), so the message names it, not only its place. */
function sourceAt(text: string, at: { line: number; col: number } | undefined): string {
  const line = at === undefined ? undefined : text.split('\n')[at.line - 1];
  const from = line?.slice(Math.max(0, at!.col - 1)).trim().slice(0, 80);
  return from === undefined || from === '' ? '' : ` ${from}`;
}

/** Text settings whose value is a number, which YAML rightly reads as one. */
const NUMERIC_TEXT: ReadonlySet<string> = new Set(['query-log-sample']);

/**
 * One zone in two spellings ("consul.local", "Consul.Local.") is one zone: the
 * router would take one and the health gauge name the other. Refused, as
 * CoreDNS refuses a zone defined twice (node-cache's stub blocks).
 */
function onceEach(spellings: Map<string, string>, stub: StubDomain, written: string, where: string): StubDomain {
  const before = spellings.get(stub.zone);
  if (before !== undefined) throw new ConfigError(`${where}: zone "${stub.zone}" given twice, as "${before}" and "${written}"`);
  spellings.set(stub.zone, written);
  return stub;
}

/**
 * True for a zone name a router and the kubelet can both use: labels of
 * letters, digits, "-" and "_" (DNS itself allows any byte in a label, so
 * nameToWire takes " " or a stray quote from a templated manifest; no
 * cluster's zone holds one, and such a zone would silently match nothing).
 */
export function plainZoneName(zone: string): boolean {
  try {
    nameToWire(zone);
  } catch {
    return false;
  }
  return zone.replace(/\.$/, '').split('.').every((l) => /^[A-Za-z0-9_-]*$/.test(l));
}

export function stubDomain(where: string, zone: string, servers: readonly string[], warn: Warn): StubDomain {
  if (!plainZoneName(zone)) throw new ConfigError(`${where}: "${zone}" is not a valid zone name (labels of letters, digits, "-" and "_")`);
  const name = zone.toLowerCase().replace(/\.$/, '');
  // As kube-dns (IsDNS1123Subdomain): the root zone would send every name to these servers.
  if (name === '') throw new ConfigError(`${where}: "${zone}" is the root zone, which would take every name`);
  const written = servers.flatMap((s) => s.split(','));
  const addrs = written.map((s) => {
    const a = parseHostPort(s, 53);
    if (typeof a === 'string') throw new ConfigError(`${where}: ${a}`);
    const w = portLikeLastGroup(s, a);
    if (w !== null) warn(`${where}: ${w}`);
    return a;
  });
  refuseDuplicateServers(where, addrs, written);
  return { zone: name, servers: addrs };
}

/**
 * One server twice in a list the operator wrote (in any spelling: "127.0.0.1"
 * and "127.0.0.1:53") would get twice its share of queries, and a second try
 * before the next server: a typo, refused naming the list and the server.
 * `written[i]` is how `servers[i]` was written.
 */
export function refuseDuplicateServers(where: string, servers: readonly ServerAddress[], written: readonly string[]): void {
  const seen = new Map<string, string>();
  servers.forEach((s, i) => {
    const key = formatHostPort(s);
    const before = seen.get(key);
    if (before !== undefined) throw new ConfigError(`${where}: ${key} given twice ("${before}" and "${written[i]?.trim()}"); give each server once`);
    seen.set(key, written[i]?.trim() ?? key);
  });
}

/**
 * A kube-dns ConfigMap list with each server once, first spelling kept. The
 * ConfigMap is kube-dns's (and node-cache's) too, and both take one server
 * twice: refused here, a ConfigMap the cluster runs with stopped every node's
 * agent at start. So a second one is dropped with a warning; our own flag and
 * file still refuse it (refuseDuplicateServers). Entries that do not parse
 * are kept, for the caller to refuse naming them.
 */
function usedOnce(where: string, servers: readonly string[], warn: Warn): string[] {
  const seen = new Map<string, string>();
  return servers.flatMap((s) => s.split(',')).filter((text) => {
    const a = parseHostPort(text, 53);
    if (typeof a === 'string') return true;
    const key = formatHostPort(a);
    const before = seen.get(key);
    if (before === undefined) seen.set(key, text.trim());
    else warn(`${where}: ${key} given twice ("${before}" and "${text.trim()}"); used once (kube-dns reads this list too, and takes it)`);
    return before === undefined;
  });
}

/** The members of a parsed JSON object as written, a key given twice listed twice (JSON.parse keeps the last alone). */
function jsonMembers(text: string, doc: Record<string, unknown>): [string, unknown][] {
  const map = parseDocument(text, { uniqueKeys: false }).contents;
  if (!isMap(map)) return Object.entries(doc);
  return map.items.map((item) => {
    const key = String(isScalar(item.key) ? item.key.value : item.key);
    return [key, doc[key]];
  });
}

/** kube-dns allows at most 3 upstream nameservers (as glibc's MAXNS); node-cache refuses more too. */
const KUBE_DNS_MAX_UPSTREAMS = 3;

/**
 * The kube-dns ConfigMap's settings, each with the warnings about it. It is
 * under our own file and flags, which may replace a stub zone or the
 * upstream list by design: a warning about what is replaced would be about
 * servers not used, so the caller says only those of what it uses.
 */
export interface KubeDnsConfig {
  stubDomains: { stub: StubDomain; warnings: string[] }[];
  upstreamNameservers: string[];
  upstreamWarnings: string[];
  upstreamNameserversFile: string;
}

/**
 * `stubDomains` (a JSON map zone -> [IP[:PORT]]) and `upstreamNameservers` (a
 * JSON list) from the kube-dns ConfigMap mounted at --kube-dns-config-dir, as
 * node-cache reads them. A missing directory or file is no configuration; a
 * malformed or unreadable one is a ConfigError (at start: exit 2; on reload: refused, the
 * old config keeps serving).
 */
export function readKubeDnsConfig(raw: Raw, readFile: (path: string) => string): KubeDnsConfig | null {
  const v = raw.get('kube-dns-config-dir') ?? OPTIONS.find((o) => o.flag === 'kube-dns-config-dir')?.def;
  const dir = Array.isArray(v) ? v[v.length - 1] : v;
  if (dir === undefined || dir === '') return null;
  // Missing (no such key, or no such directory) is no configuration; a file there that cannot be read is an error,
  // else a permission or mount fault would drop its stub domains (on a reload: from a running agent) without a word.
  const read = (file: string): string | null => {
    try {
      return readFile(`${dir}/${file}`);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return null;
      throw new ConfigError(`kube-dns ConfigMap ${dir}/${file}: cannot read (${code ?? (e as Error).message})`);
    }
  };
  const parse = (file: string, text: string): unknown => {
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new ConfigError(`kube-dns ConfigMap ${dir}/${file}: not JSON (${(e as Error).message})`);
    }
  };
  const stubDomains: KubeDnsConfig['stubDomains'] = [];
  const spellings = new Map<string, string>();
  const stubText = read('stubDomains');
  if (stubText !== null && stubText.trim() !== '') {
    const doc = parse('stubDomains', stubText);
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`kube-dns ConfigMap ${dir}/stubDomains: expected a map of zone to a list of servers`);
    for (const [zone, servers] of jsonMembers(stubText, doc as Record<string, unknown>)) {
      if (!Array.isArray(servers) || servers.length === 0 || !servers.every((x) => typeof x === 'string')) {
        throw new ConfigError(`kube-dns ConfigMap ${dir}/stubDomains: ${zone} must be a non-empty list of "IP[:PORT]" strings`);
      }
      const where = `kube-dns ConfigMap stubDomains.${zone}`;
      const warnings: string[] = [];
      const warn: Warn = (w) => warnings.push(w);
      const stub = stubDomain(where, zone, usedOnce(where, servers as string[], warn), warn);
      stubDomains.push({ stub: onceEach(spellings, stub, zone, `kube-dns ConfigMap ${dir}/stubDomains`), warnings });
    }
  }
  let upstreamNameservers: string[] = [];
  const upstreamWarnings: string[] = [];
  const upText = read('upstreamNameservers');
  if (upText !== null && upText.trim() !== '') {
    const doc = parse('upstreamNameservers', upText);
    if (!Array.isArray(doc) || !doc.every((x) => typeof x === 'string')) throw new ConfigError(`kube-dns ConfigMap ${dir}/upstreamNameservers: expected a list of "IP[:PORT]" strings`);
    if (doc.length > KUBE_DNS_MAX_UPSTREAMS) throw new ConfigError(`kube-dns ConfigMap ${dir}/upstreamNameservers: at most ${KUBE_DNS_MAX_UPSTREAMS} servers, got ${doc.length}`);
    // kube-dns reads the same ConfigMap and takes plain IPs only; DNS over TLS is our flag's (or config file's).
    const tls = (doc as string[]).find(isTlsAddress);
    if (tls !== undefined) throw new ConfigError(`kube-dns ConfigMap ${dir}/upstreamNameservers: "${tls}": plain IP[:PORT] only (kube-dns reads this too); give tls:// upstreams with --upstream-nameservers`);
    upstreamNameservers = usedOnce(`kube-dns ConfigMap ${dir}/upstreamNameservers`, doc as string[], (w) => upstreamWarnings.push(w));
  }
  return { stubDomains, upstreamNameservers, upstreamWarnings, upstreamNameserversFile: `${dir}/upstreamNameservers` };
}
