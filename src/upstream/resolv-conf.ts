/**
 * resolv.conf as glibc reads it (resolv/res_init.c), so the agent forwards to
 * the same servers, with the same options, as the node's own resolver would:
 *
 * - a keyword counts only at the start of a line and followed by a space or
 *   tab; lines starting with '#' or ';' are comments, and there are no others:
 *   a '#' later in a line is a word like any; anything else is ignored
 * - `domain` and `search` both set the search list: the last one wins
 * - `nameserver`: one address per line, up to the first blank (an address
 *   with a ';' or '#' in it is none), the rest of the line ignored; IPv6 may
 *   carry a %zone. glibc uses the first 3 (MAXNS) lines only: we keep all, and
 *   warn when a server is on none of them (not for one server on 4 lines).
 *   A server on two lines is kept once, where first written: the second line
 *   adds no server, only a second try of the same one
 * - `options` accumulate over lines; ndots is capped at 15, timeout at 30 s
 *   and attempts at 5 (RES_MAXNDOTS, RES_MAXRETRANS, RES_MAXRETRY)
 *
 * Pure: text in, values and warnings out.
 */
import { canonicalIp } from '../addr.js';
import type { ServerAddress } from './types.js';

export interface ResolvConfOptions {
  timeoutMs: number | undefined;
  attempts: number | undefined;
  rotate: boolean;
  ndots: number | undefined;
}

export interface ResolvConf {
  nameservers: ServerAddress[];
  search: string[];
  options: ResolvConfOptions;
  warnings: string[];
}

const MAXNS = 3;
const MAX_NDOTS = 15;
const MAX_TIMEOUT_S = 30;
const MAX_ATTEMPTS = 5;

/** Options glibc knows and we have no use for: accepted without a warning. */
const IGNORED_OPTIONS = new Set([
  'debug', 'inet6', 'edns0', 'single-request', 'single-request-reopen', 'no-tld-query', 'no_tld_query',
  'no-reload', 'use-vc', 'trust-ad', 'no-aaaa', 'ip6-bytestring', 'ip6-dotint', 'no-ip6-dotint',
  'insecure1', 'insecure2',
]);

/** The blank-separated words of a line's rest: glibc knows no comment after a keyword. */
function tokens(rest: string): string[] {
  return rest.split(/[ \t]+/).filter((t) => t !== '');
}

/** atoi(): the leading decimal digits, as glibc reads option values. */
function leadingInt(s: string): number | undefined {
  const m = /^\d+/.exec(s);
  return m === null ? undefined : Number(m[0]);
}

function parseNameserver(token: string): ServerAddress | string {
  // Canonical, as every configured address: answers are matched by their source, which the kernel spells so.
  const host = canonicalIp(token);
  if (host !== null) return { host, port: 53 };
  return `nameserver "${token}" is not an IPv4 or IPv6 address: skipped`;
}

export function parseResolvConf(text: string): ResolvConf {
  const nameservers: ServerAddress[] = [];
  // The servers of the first MAXNS valid nameserver lines: glibc's, a server on two of them taking two of its places.
  const glibcUses = new Set<string>();
  let nameserverLines = 0;
  let search: string[] = [];
  const options: ResolvConfOptions = { timeoutMs: undefined, attempts: undefined, rotate: false, ndots: undefined };
  const warnings: string[] = [];

  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    const where = `line ${i + 1}`;
    if (line.trim() === '' || line[0] === '#' || line[0] === ';') continue;
    const m = /^([A-Za-z_-]+)[ \t](.*)$/.exec(line);
    const keyword = m === null ? '' : m[1]!;
    const args = m === null ? [] : tokens(m[2]!);
    switch (keyword) {
      case 'nameserver': {
        if (args.length === 0) {
          warnings.push(`${where}: nameserver without an address: ignored`);
          break;
        }
        const ns = parseNameserver(args[0]!);
        if (typeof ns === 'string') warnings.push(`${where}: ${ns}`);
        else {
          if (nameserverLines++ < MAXNS) glibcUses.add(ns.host);
          // Hosts are canonical: one server in two spellings is one string.
          if (!nameservers.some((n) => n.host === ns.host)) nameservers.push(ns);
        }
        // Ignored as glibc ignores it; only what does not read as a comment is worth a word.
        if (args.length > 1 && !/^[#;]/.test(args[1]!)) warnings.push(`${where}: only one address per nameserver line; ignored "${args.slice(1).join(' ')}"`);
        break;
      }
      case 'domain':
        // An empty list leaves the previous one in place, as in glibc.
        if (args.length > 0) search = [args[0]!];
        break;
      case 'search':
        if (args.length > 0) search = args;
        break;
      case 'options':
        for (const opt of args) parseOption(opt, options, warnings, where);
        break;
      case 'sortlist':
        break;
      default:
        warnings.push(`${where}: not understood (glibc ignores it too): "${line.trim()}"`);
    }
  }
  // Counted as servers, not lines: one server on four lines is one server, used here as by glibc.
  const beyond = nameservers.filter((n) => !glibcUses.has(n.host)).map((n) => n.host);
  if (beyond.length > 0) {
    warnings.push(`${nameservers.length} distinct nameservers: glibc uses only the first ${MAXNS} nameserver lines, so not ${beyond.join(', ')}; all are used here`);
  }
  return { nameservers, search, options, warnings };
}

function parseOption(opt: string, options: ResolvConfOptions, warnings: string[], where: string): void {
  const colon = opt.indexOf(':');
  const name = colon < 0 ? opt : opt.slice(0, colon);
  const value = colon < 0 ? undefined : leadingInt(opt.slice(colon + 1));
  const numeric = name === 'ndots' || name === 'timeout' || name === 'attempts';
  if (numeric && value === undefined) {
    warnings.push(`${where}: option "${opt}" needs a number: ignored`);
    return;
  }
  switch (name) {
    case 'ndots':
      if (value! > MAX_NDOTS) warnings.push(`${where}: ndots ${value} capped at ${MAX_NDOTS}, as glibc does`);
      options.ndots = Math.min(value!, MAX_NDOTS);
      return;
    case 'timeout':
      if (value! > MAX_TIMEOUT_S) warnings.push(`${where}: timeout ${value} capped at ${MAX_TIMEOUT_S} s, as glibc does`);
      // glibc waits at least 1 s per try even with timeout:0.
      options.timeoutMs = Math.min(Math.max(value!, 1), MAX_TIMEOUT_S) * 1000;
      return;
    case 'attempts':
      if (value! > MAX_ATTEMPTS) warnings.push(`${where}: attempts ${value} capped at ${MAX_ATTEMPTS}, as glibc does`);
      // glibc would then send nothing at all; one try is the only useful reading.
      if (value === 0) warnings.push(`${where}: attempts:0 read as 1`);
      options.attempts = Math.min(Math.max(value!, 1), MAX_ATTEMPTS);
      return;
    case 'rotate':
      options.rotate = true;
      return;
    default:
      if (!IGNORED_OPTIONS.has(name)) warnings.push(`${where}: unknown option "${opt}": ignored`);
  }
}
