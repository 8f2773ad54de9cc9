/**
 * node-cache's interception rules (kubernetes/dns cmd/node-cache/app
 * initIptables) as data, and their two renderings: an iptables-restore batch
 * and an nftables script. Pure: text in, text out, no commands run here.
 *
 * For each listen address A and DNS port P (udp and tcp), health port H (tcp):
 *   raw    PREROUTING  -d A --dport P  -m socket  NOTRACK   pods -> us, while a socket of ours is there
 *   raw    OUTPUT      -s A --sport P  NOTRACK   our replies
 *   raw    OUTPUT      -d A --dport P  NOTRACK   hostNetwork clients -> us
 *   raw    OUTPUT      -d A --dport H, -s A --sport H  NOTRACK  (tcp) the kubelet's liveness probe
 *   filter INPUT       -d A --dport P  ACCEPT    untracked packets match no "ESTABLISHED" accept
 *   filter OUTPUT      -s A --sport P  ACCEPT
 * and, given a fail-open target T (the cluster DNS ClusterIP, IPVS mode), for each A other than T:
 *   nat    PREROUTING  -d A --dport P  DNAT --to-destination T:53
 *
 * Fail open. The PREROUTING NOTRACK is what steers pods to us (an untracked
 * packet skips the nat table, so kube-proxy's DNAT of the ClusterIP never
 * happens and the packet is delivered to the address on our link). It only
 * applies while a socket bound to A:P exists (`-m socket`, nft `socket
 * wildcard 0` and for TCP the pair in nftRules): the kernel closes our sockets the moment the agent dies,
 * however it dies (SIGKILL, OOM), so from the next packet on pods' queries are
 * conntracked again and take kube-proxy's path to kube-dns; a restarted agent
 * binds again and the rule matches again, with nothing to rewrite. Sockets
 * bound to the wildcard address (a dnsmasq on *:53) do not count: only ours
 * are bound to A. In IPVS mode pods are pointed at a link-local A (IPVS takes
 * the ClusterIP in LOCAL_IN, NOTRACK or not, so it cannot be intercepted), and
 * with us dead nothing else answers there: the nat DNAT sends A to T. It only
 * sees conntracked packets, i.e. exactly those the NOTRACK let through, and T
 * is local under IPVS (kube-ipvs0). Under iptables-mode kube-proxy T is not
 * local and a DNAT to it would leave the node: set no T there.
 * The lookup finds listening sockets too, so a DNS-over-TCP connection a pod
 * opened to kube-dns while we were down is reset when we are back (its next
 * segment is NOTRACKed to our listener); clients reconnect, to us.
 * Limitation: the socket match exists for PREROUTING and INPUT only (the
 * kernel refuses xt_socket in OUTPUT, and nft's `socket` in output finds the
 * sender's own socket), so the raw OUTPUT NOTRACK for hostNetwork clients
 * stays unconditional: with the agent dead, node processes and hostNetwork
 * pods get "connection refused" from A until it is back.
 *
 * iptables: the rules live in chains of our own (NAME-PREROUTING, ...), each
 * jumped to from rule 1 of its built-in chain. Order matters, not only
 * presence: a rule above our jump such as `-t raw -A PREROUTING ! -p 253 -j
 * ACCEPT` ends the raw table for every packet and silently defeats NOTRACK
 * (kubernetes-sigs/node-local-dns#13), so the check moves our jump back to
 * rule 1 when a rule above it may decide (mayDecide), not merely because
 * another jump to a user chain got there first.
 *
 * nftables: one table `inet NAME` (IPv4 and IPv6 together) whose base chains
 * sit at priority raw (-300), before conntrack (-200), and just before filter.
 */
import { type IpFamily, canonicalIp, ipFamily } from './ip-bytes.js';

export interface RuleSetOptions {
  /** The agent's name: comment on every rule, chain prefix (upper case), nft table name. */
  readonly name: string;
  readonly addresses: readonly string[];
  /** The DNS port (53). */
  readonly port: number;
  /** The health port the kubelet probes (node-cache: 8080), or null for none. */
  readonly healthPort: number | null;
  /**
   * Where pods' DNS to our addresses goes while no socket of ours listens:
   * the cluster DNS ClusterIP and port, in IPVS mode only (the address is then
   * local to the node). null or absent: no DNAT, kube-proxy's own rules decide.
   */
  readonly failOpenTo?: { readonly host: string; readonly port: number } | null;
}

export type Table = 'raw' | 'filter' | 'nat';
export type BuiltinChain = 'PREROUTING' | 'INPUT' | 'OUTPUT';

/** One rule in iptables terms; the nft rendering is derived from it. */
export interface Rule {
  readonly table: Table;
  readonly hook: BuiltinChain;
  readonly family: IpFamily;
  readonly proto: 'udp' | 'tcp';
  /** Match on destination (to us) or source (from us). */
  readonly dir: 'to' | 'from';
  readonly addr: string;
  readonly port: number;
  readonly verdict: 'notrack' | 'accept' | 'dnat';
  /** Only while a (non-wildcard) socket is bound to addr:port: our fail-open condition. */
  readonly ifSocket: boolean;
  /** dnat only: "10.96.0.10:53" / "[fd00::10]:53". */
  readonly to: string | null;
}

const VERDICT: Readonly<Record<Table, Rule['verdict']>> = { raw: 'notrack', filter: 'accept', nat: 'dnat' };

export function buildRules(o: RuleSetOptions): Rule[] {
  const rules: Rule[] = [];
  const target = o.failOpenTo ?? null;
  const targetIp = target === null ? null : canonicalIp(target.host);
  const targetFamily = target === null ? null : ipFamily(target.host);
  if (target !== null && (targetIp === null || targetFamily === null)) throw new Error(`firewall: fail-open target "${target.host}" is not an IP address`);
  for (const a of o.addresses) {
    const addr = canonicalIp(a);
    const family = ipFamily(a);
    if (addr === null || family === null) throw new Error(`firewall: "${a}" is not an IP address`);
    const r = (table: Table, hook: BuiltinChain, proto: 'udp' | 'tcp', dir: 'to' | 'from', port: number, to: string | null = null): void => {
      rules.push({ table, hook, family, proto, dir, addr, port, verdict: VERDICT[table], ifSocket: table === 'raw' && hook === 'PREROUTING', to });
    };
    for (const p of ['udp', 'tcp'] as const) r('raw', 'PREROUTING', p, 'to', o.port);
    for (const p of ['udp', 'tcp'] as const) r('raw', 'OUTPUT', p, 'from', o.port);
    for (const p of ['udp', 'tcp'] as const) r('raw', 'OUTPUT', p, 'to', o.port);
    if (o.healthPort !== null) {
      r('raw', 'OUTPUT', 'tcp', 'to', o.healthPort);
      r('raw', 'OUTPUT', 'tcp', 'from', o.healthPort);
    }
    for (const p of ['udp', 'tcp'] as const) r('filter', 'INPUT', p, 'to', o.port);
    for (const p of ['udp', 'tcp'] as const) r('filter', 'OUTPUT', p, 'from', o.port);
    // The target itself needs no DNAT (kube-proxy's rules handle it), and a DNAT crosses no family.
    if (target !== null && targetIp !== addr && targetFamily === family) {
      const to = family === 4 ? `${targetIp}:${target.port}` : `[${targetIp}]:${target.port}`;
      for (const p of ['udp', 'tcp'] as const) r('nat', 'PREROUTING', p, 'to', o.port, to);
    }
  }
  return rules;
}

// ---- iptables ----------------------------------------------------------------

/** Built-in chains we hook, per table. */
export const HOOKS: Readonly<Record<Table, readonly BuiltinChain[]>> = { raw: ['PREROUTING', 'OUTPUT'], filter: ['INPUT', 'OUTPUT'], nat: ['PREROUTING'] };

/** Our chain for a built-in one: NODELOCALDNS-PREROUTING (iptables allows 28 characters). */
export function ourChain(name: string, hook: BuiltinChain): string {
  return `${name.toUpperCase()}-${hook}`.slice(0, 28);
}

/** A rule exactly as iptables-save prints it, so the check compares like with like. */
export function iptablesRuleSpec(name: string, r: Rule): string {
  const host = `${r.addr}/${r.family === 4 ? 32 : 128}`;
  const where = r.dir === 'to' ? `-d ${host}` : `-s ${host}`;
  const port = r.dir === 'to' ? `--dport ${r.port}` : `--sport ${r.port}`;
  // Plain -m socket, not --nowildcard: a wildcard listener (someone else's *:53) must not keep the interception on.
  const socket = r.ifSocket ? ' -m socket' : '';
  const target = r.verdict === 'notrack' ? 'NOTRACK' : r.verdict === 'accept' ? 'ACCEPT' : `DNAT --to-destination ${r.to ?? ''}`;
  return `${where} -p ${r.proto} -m ${r.proto} ${port}${socket} -m comment --comment ${quoteComment(name)} -j ${target}`;
}

export function jumpSpec(name: string, hook: BuiltinChain): string {
  return `-m comment --comment ${quoteComment(name)} -j ${ourChain(name, hook)}`;
}

function quoteComment(s: string): string {
  return /^[A-Za-z0-9_.:-]+$/.test(s) ? s : `"${s.replace(/["\\]/g, '')}"`;
}

/** One table of `iptables-save -t TABLE` output: rule specs (without "-A CHAIN") per chain, in order. */
export type SavedTable = ReadonlyMap<string, readonly string[]>;

export function parseSave(text: string, table: Table): SavedTable {
  const chains = new Map<string, string[]>();
  let inTable = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) inTable = line === `*${table}`;
    else if (!inTable) continue;
    else if (line.startsWith(':')) {
      const chain = line.slice(1).split(/\s+/)[0] ?? '';
      if (!chains.has(chain)) chains.set(chain, []);
    } else if (line.startsWith('-A ')) {
      const rest = line.slice(3);
      const sp = rest.indexOf(' ');
      const chain = sp < 0 ? rest : rest.slice(0, sp);
      const spec = sp < 0 ? '' : rest.slice(sp + 1);
      const list = chains.get(chain) ?? [];
      list.push(spec);
      chains.set(chain, list);
    }
  }
  return chains;
}

/**
 * One spelling per rule: iptables versions differ in quoting, in showing /32,
 * in the implicit `-m udp`, and print NOTRACK either as is or as CT --notrack.
 */
export function normalizeSpec(spec: string): string {
  return spec
    .replace(/"/g, '')
    .replace(/\/(32|128)\b/g, '')
    .replace(/ -m (udp|tcp)\b/g, '')
    .replace(/-j CT --notrack\b/g, '-j NOTRACK')
    .replace(/\s+/g, ' ')
    .trim();
}

/** What is wrong with one table, in words; empty when it is exactly as we want it. */
export function diffIptables(name: string, table: Table, saved: SavedTable, want: readonly Rule[]): string[] {
  const problems: string[] = [];
  for (const hook of HOOKS[table]) {
    const chain = ourChain(name, hook);
    const jumps = jumpPositions(saved, hook, chain);
    const ahead = jumps.length === 0 ? undefined : (saved.get(hook) ?? []).slice(0, jumps[0]).find((spec) => mayDecide(spec, saved));
    if (jumps.length === 0) problems.push(`${table} ${hook}: no jump to ${chain}`);
    else if (ahead !== undefined) problems.push(`${table} ${hook}: jump to ${chain} is rule ${jumps[0]! + 1}, below "-A ${hook} ${ahead}"`);
    if (jumps.length > 1) problems.push(`${table} ${hook}: ${jumps.length} jumps to ${chain}`);
    const have = saved.get(chain);
    const expected = want.filter((r) => r.table === table && r.hook === hook).map((r) => normalizeSpec(iptablesRuleSpec(name, r)));
    if (have === undefined) problems.push(`${table} ${chain}: chain missing`);
    else {
      const got = have.map(normalizeSpec);
      if (got.length !== expected.length || got.some((g, i) => g !== expected[i])) {
        problems.push(`${table} ${chain}: ${got.length} rules, expected ${expected.length}${firstDifference(got, expected)}`);
      }
    }
  }
  return problems;
}

/** Targets after which a packet carries on down the same chain. */
const PASS_THROUGH = new Set(['LOG', 'NFLOG', 'MARK', 'CONNMARK', 'TRACE', 'CLASSIFY', 'DSCP', 'TOS', 'TTL', 'HL', 'CHECKSUM', 'TCPMSS', 'SECMARK', 'CONNSECMARK']);

/**
 * Whether a rule above our jump could keep packets from reaching it: a
 * verdict (ACCEPT, DROP, CT, DNAT...), a goto (the chain it goes to ends in
 * the built-in chain's policy), or a target we do not know, however narrowed
 * (we do not judge matches). A jump to another chain of this table comes back
 * and is no reason to move: Calico's Felix and kube-proxy keep their jumps at
 * the top too, and demanding rule 1 made them and us swap places forever.
 * node-cache checks presence only; what the chain they jump to does is
 * theirs, as it is for node-cache.
 */
function mayDecide(spec: string, saved: SavedTable): boolean {
  const m = /(?:^| )-([jg]) (\S+)/.exec(unquoted(spec));
  if (m === null) return false; // no target: a counter
  if (m[1] === 'g') return true;
  const target = m[2]!;
  return !saved.has(target) && !PASS_THROUGH.has(target);
}

function firstDifference(got: readonly string[], want: readonly string[]): string {
  for (let i = 0; i < Math.max(got.length, want.length); i++) {
    if (got[i] !== want[i]) return ` (rule ${i + 1}: have "${got[i] ?? '-'}", want "${want[i] ?? '-'}")`;
  }
  return '';
}

/** Indexes (0-based) of the rules in a built-in chain that jump to our chain. */
function jumpPositions(saved: SavedTable, hook: BuiltinChain, chain: string): number[] {
  const out: number[] = [];
  (saved.get(hook) ?? []).forEach((spec, i) => {
    if (new RegExp(`(^| )-j ${chain}( |$)`).test(unquoted(spec))) out.push(i);
  });
  return out;
}

/**
 * A saved spec with each quoted value (a comment, a log prefix, as
 * iptables-save quotes them: "...", with \" and \\ escaped) emptied, so
 * text such as `--comment "before -j NODELOCALDNS-INPUT"` is not read as a
 * rule's target.
 */
function unquoted(spec: string): string {
  return spec.replace(/"(?:[^"\\]|\\.)*"/g, '""');
}

/**
 * One iptables-restore --noflush batch for one table: declaring our chains
 * flushes (or creates) them, existing jumps are deleted by their exact saved
 * spec, fresh jumps go in at position 1, then our rules. Applied atomically,
 * so no packet ever sees a half-built set.
 */
export function iptablesApplyBatch(name: string, table: Table, saved: SavedTable, want: readonly Rule[]): string {
  const lines = [`*${table}`];
  for (const hook of HOOKS[table]) lines.push(`:${ourChain(name, hook)} - [0:0]`);
  for (const hook of HOOKS[table]) {
    const chain = ourChain(name, hook);
    for (const i of jumpPositions(saved, hook, chain)) lines.push(`-D ${hook} ${saved.get(hook)?.[i] ?? ''}`);
    lines.push(`-I ${hook} 1 ${jumpSpec(name, hook)}`);
  }
  for (const r of want) if (r.table === table) lines.push(`-A ${ourChain(name, r.hook)} ${iptablesRuleSpec(name, r)}`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** The batch that removes our jumps and chains from one table; null when nothing of ours is there. */
export function iptablesRemoveBatch(name: string, table: Table, saved: SavedTable): string | null {
  const lines = [`*${table}`];
  let ours = false;
  for (const hook of HOOKS[table]) {
    const chain = ourChain(name, hook);
    for (const i of jumpPositions(saved, hook, chain)) {
      lines.push(`-D ${hook} ${saved.get(hook)?.[i] ?? ''}`);
      ours = true;
    }
  }
  for (const hook of HOOKS[table]) {
    const chain = ourChain(name, hook);
    if (!saved.has(chain)) continue;
    lines.push(`:${chain} - [0:0]`, `-X ${chain}`); // declaring flushes; an empty chain can be deleted
    ours = true;
  }
  if (!ours) return null;
  lines.push('COMMIT', '');
  return lines.join('\n');
}

// ---- nftables ----------------------------------------------------------------

/** Base chains of our table: [name, hook, priority]. raw = -300 runs before conntrack (-200). */
const NFT_CHAINS: readonly (readonly [string, 'prerouting' | 'input' | 'output', number, Table, BuiltinChain])[] = [
  ['raw-prerouting', 'prerouting', -300, 'raw', 'PREROUTING'],
  // dstnat (-100), like kube-proxy's own nat chains; only conntracked packets reach a nat chain.
  ['nat-prerouting', 'prerouting', -100, 'nat', 'PREROUTING'],
  ['raw-output', 'output', -300, 'raw', 'OUTPUT'],
  // Just before the filter tables. An accept ends only this base chain (other
  // tables still see the packet), which is what node-cache's ACCEPT amounts to
  // under nftables as well: it matters against drops in our own table only.
  ['filter-input', 'input', -10, 'filter', 'INPUT'],
  ['filter-output', 'output', -10, 'filter', 'OUTPUT'],
];

/**
 * The nft rules for one Rule. A socket-conditional one matches as iptables'
 * plain -m socket does: any socket found for the packet, unless a full one
 * bound to the wildcard. `socket wildcard 0` alone is not that: for a socket
 * that is not full (TCP's request socket in SYN_RECV, a TIME_WAIT one) it
 * yields nothing, so the client's ACK that completes the handshake was
 * tracked, took kube-proxy's DNAT (or the fail-open one) and kube-dns reset
 * the connection. So a wildcard socket returns first (ends our chain), then
 * any other socket found is NOTRACKed (`socket transparent` has a value for
 * every kind; ours are never IP_TRANSPARENT). UDP finds full sockets only:
 * one rule.
 */
export function nftRules(name: string, r: Rule): string[] {
  if (!r.ifSocket) return [nftRule(name, r)];
  if (r.proto === 'udp') return [nftRule(name, r, 'socket wildcard 0')];
  return [nftRule(name, r, 'socket wildcard 1', 'return'), nftRule(name, r, 'socket transparent 0')];
}

export function nftRule(name: string, r: Rule, socket = '', verdictText?: string): string {
  const ip = r.family === 4 ? 'ip' : 'ip6';
  const where = r.dir === 'to' ? `${ip} daddr ${r.addr}` : `${ip} saddr ${r.addr}`;
  const port = r.dir === 'to' ? `${r.proto} dport ${r.port}` : `${r.proto} sport ${r.port}`;
  const verdict = verdictText ?? (r.verdict === 'dnat' ? `dnat ${ip} to ${r.to ?? ''}` : r.verdict);
  return `${where} ${port}${socket === '' ? '' : ` ${socket}`} ${verdict} comment "${name.replace(/["\\]/g, '')}"`;
}

/**
 * `nft -f -` input that replaces our table in one transaction: declaring the
 * table first makes the delete succeed whether or not it exists (nft 1.0 has
 * no `destroy`), and the new definition follows in the same commit.
 */
export function nftApplyScript(name: string, want: readonly Rule[]): string {
  const lines = [`table inet ${name}`, `delete table inet ${name}`, `table inet ${name} {`];
  for (const [chain, hook, prio, table, builtin] of NFT_CHAINS) {
    const rules = want.filter((r) => r.table === table && r.hook === builtin);
    // No nat chain without a DNAT: a nat base chain costs a hook (and needs nf_nat) for nothing.
    if (table === 'nat' && rules.length === 0) continue;
    lines.push(`\tchain ${chain} {`, `\t\ttype ${table === 'nat' ? 'nat' : 'filter'} hook ${hook} priority ${prio}; policy accept;`);
    for (const r of rules) lines.push(...nftRules(name, r).map((l) => `\t\t${l}`));
    lines.push('\t}');
  }
  lines.push('}', '');
  return lines.join('\n');
}

export function nftRemoveScript(name: string): string {
  return `table inet ${name}\ndelete table inet ${name}\n`;
}
