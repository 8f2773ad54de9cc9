/**
 * Installs, checks and removes the interception rules (firewall-rules.ts) on
 * the node, through iptables-restore / ip6tables-restore or nft. Every change
 * is one atomic batch per table and family; the check reads the rules back
 * and repairs anything missing, changed or out of order.
 */
import type { IpFamily } from './ip-bytes.js';
import {
  type Rule,
  type RuleSetOptions,
  type SavedTable,
  type Table,
  buildRules,
  diffIptables,
  iptablesApplyBatch,
  iptablesRemoveBatch,
  nftApplyScript,
  nftRemoveScript,
  parseSave,
} from './firewall-rules.js';
import { CUT_SHORT, type CommandRunner, describeResult } from './run-command.js';
import { type OtherBackends, clearOtherBackends } from './firewall-others.js';
import { type SetupCounters, bump } from './setup-counters.js';

/**
 * iptables in a given mode (legacy or nft; null: whatever plain `iptables`
 * is on this image), or nftables directly.
 */
export type FirewallBackend = { readonly kind: 'iptables'; readonly mode: 'legacy' | 'nft' | null } | { readonly kind: 'nftables' };

export interface FirewallOptions extends RuleSetOptions {
  readonly backend: FirewallBackend;
  readonly run: CommandRunner;
  readonly counters: SetupCounters;
  /** Seconds iptables-restore waits for the xtables lock (-w) before failing; the next check retries. */
  readonly lockWaitSeconds?: number;
}

export interface FirewallCheck {
  /** What was wrong and has been rewritten, e.g. "raw PREROUTING: jump to NODELOCALDNS-PREROUTING is rule 2, ...". */
  readonly repaired: readonly string[];
  readonly error: string | null;
}

export class FirewallError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FirewallError';
  }
}

const DEFAULT_LOCK_WAIT_S = 5;
/**
 * Always ours; nat only with a fail-open DNAT, and when clearing up (apply,
 * remove) in case an earlier run had one: that read is best effort, so a
 * kernel without a nat table for a family still gets raw and filter.
 */
const BASE_TABLES: readonly Table[] = ['raw', 'filter'];
const ALL_TABLES: readonly Table[] = ['raw', 'filter', 'nat'];

export class Firewall {
  readonly backend: FirewallBackend;
  readonly #name: string;
  readonly #rules: readonly Rule[];
  readonly #run: CommandRunner;
  readonly #counters: SetupCounters;
  readonly #lockWait: number;
  /** nftables only: our table as the kernel listed it right after we wrote it; the check compares against it. */
  #nftBaseline: string | null = null;

  constructor(opts: FirewallOptions) {
    this.backend = opts.backend;
    this.#name = opts.name;
    this.#rules = buildRules(opts);
    this.#run = opts.run;
    this.#counters = opts.counters;
    this.#lockWait = opts.lockWaitSeconds ?? DEFAULT_LOCK_WAIT_S;
    if (!/^[A-Za-z0-9_-]{1,20}$/.test(opts.name)) throw new FirewallError(`firewall name "${opts.name}": 1-20 letters, digits, "_" or "-"`);
  }

  /**
   * Startup: write every rule (replacing any of ours already there), then
   * clear what an earlier run left through another backend. Throws
   * FirewallError when ours cannot be written; says what it cleared.
   */
  async apply(): Promise<OtherBackends> {
    const err = await this.#write(null);
    if (err !== null) throw new FirewallError(err);
    return this.#clearOthers();
  }

  /**
   * Periodic: read back, and rewrite whatever differs. Never throws. Once
   * `stop` is aborted (shutdown) it runs no further command: what it would
   * still write, the teardown after it would only have to take out again.
   */
  async check(stop?: AbortSignal): Promise<FirewallCheck> {
    const repaired: string[] = [];
    const err = await this.#write(repaired, stop);
    bump(this.#counters, 'firewallRepairs', repaired.length);
    return { repaired, error: err };
  }

  /** Teardown: delete only our jumps, chains and table, in every backend. Returns an error text or null. */
  async remove(): Promise<string | null> {
    const errors = [...(await this.#removeOwn()), ...(await this.#clearOthers()).errors];
    return errors.length === 0 ? null : errors.join('; ');
  }

  async #clearOthers(): Promise<OtherBackends> {
    const others = await clearOtherBackends(this.#name, this.backend, this.#run, this.#lockWait);
    for (const e of others.errors) this.#fail(e);
    return others;
  }

  async #removeOwn(): Promise<string[]> {
    if (this.backend.kind === 'nftables') {
      const r = await this.#run('nft', ['-f', '-'], nftRemoveScript(this.#name));
      this.#nftBaseline = null;
      return r.status === 0 ? [] : [this.#fail(describeResult('nft -f', r))];
    }
    const errors: string[] = [];
    for (const family of [4, 6] as const) {
      // One table that cannot be read keeps nothing from the others: each goes on its own read.
      const saved = await this.#save(family, ALL_TABLES, (t) => this.#tableWanted(family, t));
      errors.push(...saved.errors.map((e) => this.#fail(e)));
      const batch = [...saved.tables].map(([t, state]) => iptablesRemoveBatch(this.#name, t, state)).filter((b): b is string => b !== null);
      if (batch.length === 0) continue;
      const e = await this.#restore(family, batch.join(''));
      if (e !== null) errors.push(e);
    }
    return errors;
  }

  /**
   * The one write path. `repaired` null: write unconditionally (apply).
   * Otherwise write only what differs, and say why into `repaired`.
   */
  async #write(repaired: string[] | null, stop?: AbortSignal): Promise<string | null> {
    if (this.backend.kind === 'nftables') return this.#writeNft(repaired, stop);
    const errors: string[] = [];
    const looked = repaired === null || this.#rules.some((r) => r.table === 'nat') ? ALL_TABLES : BASE_TABLES;
    for (const family of [4, 6] as const) {
      if (aborted(stop)) break;
      const want = this.#rules.filter((r) => r.family === family);
      const saved = await this.#save(family, looked, (t) => this.#tableWanted(family, t));
      if (saved.errors.length > 0) {
        // All of a family or none: half its rules (ACCEPT without NOTRACK) would steer nothing and confuse the check.
        errors.push(this.#fail(saved.errors[0]!));
        continue;
      }
      const tables = saved.tables;
      if (want.length === 0) {
        // A family we no longer serve (the config dropped its last address): clear what an earlier run left.
        const batch = [...tables].map(([t, state]) => iptablesRemoveBatch(this.#name, t, state)).filter((b): b is string => b !== null);
        if (batch.length === 0 || aborted(stop)) continue;
        const e = await this.#restore(family, batch.join(''));
        if (e !== null) errors.push(e);
        else repaired?.push(`IPv${family}: removed rules for addresses no longer served`);
        continue;
      }
      // Said into `repaired` only once written: a rewrite that failed put nothing back.
      const found: string[] = [];
      const batches: string[] = [];
      for (const [t, tableState] of tables) {
        if (!want.some((r) => r.table === t)) {
          // nat without a DNAT to install: an earlier run's (a config that had one) goes.
          const stale = iptablesRemoveBatch(this.#name, t, tableState);
          if (stale === null) continue;
          found.push(`IPv${family} ${t}: removed rules no longer wanted`);
          batches.push(stale);
          continue;
        }
        if (repaired !== null) {
          const problems = diffIptables(this.#name, t, tableState, want);
          if (problems.length === 0) continue;
          found.push(...problems.map((p) => `IPv${family} ${p}`));
        }
        batches.push(iptablesApplyBatch(this.#name, t, tableState, want));
      }
      if (batches.length === 0 || aborted(stop)) continue;
      const e = await this.#restore(family, batches.join(''));
      if (e !== null) errors.push(e);
      else repaired?.push(...found);
    }
    return errors.length === 0 ? null : errors.join('; ');
  }

  async #writeNft(repaired: string[] | null, stop?: AbortSignal): Promise<string | null> {
    let found = '';
    if (repaired !== null) {
      const listed = await this.#listNft();
      if (listed === null) found = `nftables: table inet ${this.#name} missing`;
      else if (this.#nftBaseline === null) found = `nftables: table inet ${this.#name} not written by this process`;
      else if (listed !== this.#nftBaseline) found = `nftables: table inet ${this.#name} changed${firstLineDiff(listed, this.#nftBaseline)}`;
      else return null;
      if (aborted(stop)) return null;
    }
    const r = await this.#run('nft', ['-f', '-'], nftApplyScript(this.#name, this.#rules));
    if (r.status !== 0) return this.#fail(describeResult('nft -f', r));
    repaired?.push(found);
    this.#nftBaseline = await this.#listNft();
    return null;
  }

  async #listNft(): Promise<string | null> {
    const r = await this.#run('nft', ['list', 'table', 'inet', this.#name]);
    return r.status === 0 ? r.stdout : null;
  }

  /**
   * iptables-save of one family, split by table: the tables read, and why
   * each `needed` one could not be. A table we put nothing in that cannot be
   * read (nat on a kernel without ip6table_nat, and no DNAT wanted) holds
   * nothing of ours either: it is left out, not an error.
   */
  async #save(family: IpFamily, tables: readonly Table[], needed: (t: Table) => boolean): Promise<{ tables: Map<Table, SavedTable>; errors: string[] }> {
    const cmd = this.#binary(family, 'save');
    // Only the tables we use: saving every table would make iptables-legacy load modules for all of them.
    const out = new Map<Table, SavedTable>();
    const errors: string[] = [];
    for (const t of tables) {
      const r = await this.#run(cmd, ['-t', t]);
      if (r.status === 0) out.set(t, parseSave(r.stdout, t));
      else if (needed(t)) errors.push(describeResult(`${cmd} -t ${t}`, r)); // counted by the caller
    }
    return { tables: out, errors };
  }

  async #restore(family: IpFamily, batch: string): Promise<string | null> {
    const cmd = this.#binary(family, 'restore');
    const r = await this.#run(cmd, ['-w', String(this.#lockWait), '--noflush'], batch);
    return r.status === 0 ? null : this.#fail(describeResult(cmd, r));
  }

  #binary(family: IpFamily, tool: 'save' | 'restore'): string {
    const base = family === 4 ? 'iptables' : 'ip6tables';
    const mode = this.backend.kind === 'iptables' && this.backend.mode !== null ? `-${this.backend.mode}` : '';
    return `${base}${mode}-${tool}`;
  }

  /** A table of a family we write rules into (no ip6tables on a node without IPv6: nothing of ours there either). */
  #tableWanted(family: IpFamily, table: Table): boolean {
    return this.#rules.some((r) => r.family === family && r.table === table);
  }

  /**
   * Counts the failure the way node-cache does (a held xtables lock apart) and returns its text. A command the
   * agent's stop cut short is not counted: it says nothing of the node, and an alert on the count would fire at
   * a rollout.
   */
  #fail(text: string): string {
    if (!text.includes(CUT_SHORT)) bump(this.#counters, /xtables lock/i.test(text) ? 'iptablesLock' : 'iptables');
    return text;
  }
}

function firstLineDiff(a: string, b: string): string {
  const x = a.split('\n');
  const y = b.split('\n');
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if (x[i] !== y[i]) return ` (line ${i + 1}: have "${(x[i] ?? '').trim()}", wrote "${(y[i] ?? '').trim()}")`;
  }
  return '';
}

/** A function, not `stop?.aborted` inline: TypeScript would take the signal for unchanged across the awaits between two looks. */
function aborted(stop: AbortSignal | undefined): boolean {
  return stop?.aborted === true;
}
