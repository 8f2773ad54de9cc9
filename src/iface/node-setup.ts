/**
 * Node integration as two lifecycle parts (lifecycle.ts):
 *
 *   interface     before the listeners: the link (dummy, `nodelocaldns`) and
 *                 the listen addresses, so the sockets can bind;
 *   interception  after the listeners, only once we answer: the NOTRACK and
 *                 ACCEPT rules that steer pods' DNS to us.
 *
 * Stopped in reverse: interception goes first (iptables-mode traffic falls
 * back to kube-dns at once), then the listeners drain, then the addresses
 * and link go. Both are re-checked every sync interval and repaired (counted,
 * logged when something was missing), as node-cache does with
 * -syncinterval. Only non-loopback listen addresses are ours to set up:
 * loopback needs no interface and no rules.
 */
import type { Clock } from '../clock.js';
import { TEARDOWN_EXTRA_MS, type Component, type StopReason } from '../lifecycle.js';
import type { Logger } from '../log.js';
import { detectFirewallBackend } from './firewall-detect.js';
import { Firewall, type FirewallBackend } from './firewall.js';
import type { OtherBackends } from './firewall-others.js';
import type { NetlinkIo } from './netlink.js';
import { type EnsureReport, NodeInterface } from './node-interface.js';
import { CUT_SHORT, spawnRunner, type CommandResult, type CommandRunner } from './run-command.js';
import type { SetupCounters } from './setup-counters.js';

export type FirewallChoice = 'auto' | 'iptables' | 'iptables-legacy' | 'iptables-nft' | 'nftables' | 'none';

export interface NodeSetupOptions {
  /** The non-loopback listen addresses (link-local, and the kube-dns ClusterIP in iptables mode). */
  readonly addresses: readonly string[];
  readonly port: number;
  readonly healthPort: number | null;
  readonly setupInterface: boolean;
  readonly interfaceName: string;
  /** `dummy`; tests pass `bridge` (these build machines' kernels have no dummy driver). */
  readonly interfaceKind: string;
  readonly firewall: FirewallChoice;
  /** IPVS mode: the cluster DNS ClusterIP:port pods' DNS to a link-local address is DNATed to while we are down (firewall-rules.ts). */
  readonly failOpenTo?: { readonly host: string; readonly port: number } | null;
  readonly skipTeardown: boolean;
  readonly syncIntervalMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly counters: SetupCounters;
  /**
   * True when another agent serves our addresses (the new one beside us in a
   * handover, or the old one while a start of ours fails): teardown then
   * leaves the link and rules to it.
   */
  readonly successor?: () => boolean;
  /** Runs iptables/nft; injected for tests. */
  readonly run?: CommandRunner;
  /** Opens the rtnetlink socket of the interface part; injected for tests (a namespace's, or one that fails). */
  readonly netlink?: () => NetlinkIo;
}

/** A node part, and whether what it set up is in place (as of its last check), for /ready. */
export type NodePart = Component & {
  readonly inPlace: boolean;
  /** Interception: the backend chosen at start ("iptables-nft", "nftables", ...), '' before; for nodelocal_interception_active{mode}. */
  readonly mode?: string;
};

/** Chain prefix, comment and nft table name of every rule: node-cache's own name for its interface and rules. */
const RULE_NAME = 'nodelocaldns';

export function interfacePart(o: NodeSetupOptions): NodePart | null {
  if (!o.setupInterface || o.addresses.length === 0) return null;
  const iface = new NodeInterface({ name: o.interfaceName, addresses: o.addresses, kind: o.interfaceKind, counters: o.counters, open: o.netlink });
  let stopChecks: (() => Promise<void>) | null = null;
  let inPlace = false;
  let made: EnsureReport | null = null;
  return {
    name: 'interface',
    get inPlace() {
      return inPlace;
    },
    start: async () => {
      let r: EnsureReport;
      try {
        r = iface.ensure(); // undoes its own half on failure
      } catch (e) {
        iface.close();
        throw e;
      }
      o.logger.info('interface ready', {
        link: o.interfaceName, kind: r.kind, created: r.created, added: r.addressesAdded, present: r.addressesPresent,
      });
      inPlace = true;
      made = r;
      stopChecks = every(o.clock, o.syncIntervalMs, () => {
        const c = iface.check();
        inPlace = c.error === null;
        if (c.repaired.length > 0) o.logger.warn('interface repaired', { link: o.interfaceName, repaired: c.repaired });
        if (c.error !== null) o.logger.warn('interface check failed', { link: o.interfaceName, error: c.error });
        return Promise.resolve();
      });
    },
    stop: async (_deadline, why) => {
      await stopChecks?.();
      inPlace = false;
      // First, rollback included: an agent that bound our addresses after this start made them (a reuse-port
      // successor started meanwhile) serves on them now, whoever created the link.
      if (o.successor?.() === true) {
        o.logger.info('another agent serves these addresses: leaving the link to it', { link: o.interfaceName });
      } else if (why === 'rollback' && made !== null) {
        // A later part failed: what this start found (a running agent's link, say) is not ours to remove.
        logTeardown('interface start undone', iface.undoEnsure(made));
      } else if (!o.skipTeardown) {
        logTeardown('interface removed', iface.teardown());
      }
      iface.close();
    },
  };

  /** At warn when anything could not be removed: a link left holding the ClusterIP takes the node's own DNS to it. */
  function logTeardown(msg: string, r: { removed: readonly string[]; errors: readonly string[] }): void {
    const fields = { link: o.interfaceName, removed: r.removed, errors: r.errors };
    if (r.errors.length > 0) o.logger.warn(`${msg}, not all of it: left on the node`, fields);
    else o.logger.info(msg, fields);
  }
}

export function interceptionPart(o: NodeSetupOptions): NodePart | null {
  if (o.firewall === 'none' || o.addresses.length === 0) return null;
  // Aborted to cut the command in flight and those after it short: once the stop's time is up (the check in
  // flight and the teardown's commands), or when a stop comes during the start (its commands; what it wrote is
  // then removed under a limit of its own).
  let limit = new AbortController();
  const run = bounded(o.run ?? spawnRunner(), () => limit.signal);
  let firewall: Firewall | null = null;
  let stopChecks: (() => Promise<void>) | null = null;
  let inPlace = false;
  let mode = '';
  const failOpenTo = o.failOpenTo ?? null;
  return {
    name: 'interception',
    get inPlace() {
      return inPlace;
    },
    get mode() {
      return mode;
    },
    start: async (cut) => {
      // A stop during the start cuts its commands short; what the apply wrote is then removed (rollBack).
      const onCut = (): void => limit.abort();
      if (aborted(cut)) onCut();
      cut?.addEventListener('abort', onCut, { once: true });
      let applied: { fw: Firewall; reason: string; others: OtherBackends };
      try {
        applied = await apply(cut);
      } finally {
        cut?.removeEventListener('abort', onCut);
        // Cut after the rules were written (clearing other backends): the stop that follows gets real commands.
        if (limit.signal.aborted) limit = new AbortController();
      }
      const { fw, reason, others } = applied;
      inPlace = true;
      o.logger.info('interception rules in place', {
        backend: mode, why: reason, addresses: o.addresses, failOpenTo: failOpenTo === null ? 'none' : `${failOpenTo.host}:${failOpenTo.port}`,
      });
      if (others.cleared.length > 0) o.logger.info('removed interception rules an earlier run left in another backend', { from: others.cleared });
      if (others.errors.length > 0) o.logger.warn('could not remove interception rules left in another backend', { errors: others.errors });
      stopChecks = every(o.clock, o.syncIntervalMs, async (stopping) => {
        const c = await fw.check(stopping);
        inPlace = c.error === null;
        if (c.repaired.length > 0) o.logger.warn('interception rules repaired', { repaired: c.repaired });
        if (c.error !== null) o.logger.warn('interception check failed', { error: c.error });
      });
    },
    stop: async (deadline, why) => {
      // A deadline already passed (a rollback's, or 0) still leaves the teardown its extra time.
      const unsweep = cutAt(Math.max(deadline, o.clock.now()) + TEARDOWN_EXTRA_MS);
      try {
        await stopChecks?.();
        inPlace = false;
        if (firewall !== null) await removeRules(firewall, why);
      } finally {
        unsweep();
      }
    },
  };

  /** Chooses the backend and writes the rules; a write that failed is undone (rollBack) before it throws. */
  async function apply(cut: AbortSignal | undefined): Promise<{ fw: Firewall; reason: string; others: OtherBackends }> {
    const { backend, reason } = await chooseBackend(o.firewall, run);
    if (aborted(cut)) throw new Error('cut short by a stop before any rule was written');
    mode = describeBackend(backend);
    const fw = new Firewall({ name: RULE_NAME, addresses: o.addresses, port: o.port, healthPort: o.healthPort, failOpenTo, backend, run, counters: o.counters });
    firewall = fw;
    try {
      return { fw, reason, others: await fw.apply() };
    } catch (e) {
      // The lifecycle stops only parts that started: a family apply did write would steer pods to an agent that exits.
      await rollBack(fw, aborted(cut));
      throw e;
    }
  }

  /** Aborts the current `limit` once the clock reaches `end`; returns the unsubscribe. */
  function cutAt(end: number): () => void {
    const at = limit;
    return o.clock.sweep((now) => {
      if (now >= end) at.abort();
    });
  }

  /** A failed apply's rollback; after a cut (`cut`: its commands were cut short) under a limit of its own, a teardown's. */
  async function rollBack(fw: Firewall, cut: boolean): Promise<void> {
    if (!cut) return removeRules(fw, 'rollback');
    limit = new AbortController();
    const unsweep = cutAt(o.clock.now() + TEARDOWN_EXTRA_MS);
    try {
      await removeRules(fw, 'rollback');
    } finally {
      unsweep();
    }
  }

  /**
   * --skip-teardown keeps a running agent's rules at exit, not those of a start that failed: the interface
   * part's rollback removes the link it made all the same, and rules without it would send the node's own
   * NOTRACKed DNS to the ClusterIP off the node. Without rules, everything takes kube-proxy's path.
   */
  async function removeRules(fw: Firewall, why: StopReason = 'stop'): Promise<void> {
    if (o.skipTeardown && why !== 'rollback') return;
    if (o.successor?.() === true) {
      o.logger.info('another agent serves these addresses: leaving the interception rules to it');
      return;
    }
    const err = await fw.remove();
    if (err !== null) o.logger.warn('could not remove interception rules', { error: err });
    else o.logger.info('interception rules removed');
  }
}

/** `run`, each command cut short once `limit()` (as it is when the command starts) is aborted, whether or not `run` (a test's) heeds the signal itself. */
function bounded(run: CommandRunner, limit: () => AbortSignal): CommandRunner {
  return (cmd, args, stdin) => {
    const timeUp = limit();
    let cut = (): void => {};
    const cutShort = new Promise<CommandResult>((resolve) => {
      cut = () => resolve({ status: null, stdout: '', stderr: '', error: CUT_SHORT });
      if (timeUp.aborted) cut();
      else timeUp.addEventListener('abort', cut, { once: true });
    });
    const ran = timeUp.aborted ? cutShort : run(cmd, args, stdin, timeUp);
    return Promise.race([ran, cutShort]).finally(() => timeUp.removeEventListener('abort', cut));
  };
}

/** A function, not `cut?.aborted` inline: TypeScript would take the signal for unchanged across the awaits between two looks. */
function aborted(cut: AbortSignal | undefined): boolean {
  return cut?.aborted === true;
}

async function chooseBackend(choice: FirewallChoice, run: CommandRunner): Promise<{ backend: FirewallBackend; reason: string }> {
  switch (choice) {
    case 'iptables':
      return { backend: { kind: 'iptables', mode: null }, reason: '--firewall iptables' };
    case 'iptables-legacy':
      return { backend: { kind: 'iptables', mode: 'legacy' }, reason: '--firewall iptables-legacy' };
    case 'iptables-nft':
      return { backend: { kind: 'iptables', mode: 'nft' }, reason: '--firewall iptables-nft' };
    case 'nftables':
      return { backend: { kind: 'nftables' }, reason: '--firewall nftables' };
    default:
      return detectFirewallBackend(run);
  }
}

function describeBackend(b: FirewallBackend): string {
  return b.kind === 'nftables' ? 'nftables' : `iptables${b.mode === null ? '' : `-${b.mode}`}`;
}

/**
 * Runs `fn` every `intervalMs` on the clock's shared sweep, never two at a
 * time (a check that shells out to iptables may take longer than a sweep).
 * The returned stop aborts the signal `fn` was given (a run in flight ends
 * after the command it is in, rather than after every command of it) and
 * resolves once that run is over: a check still running would otherwise
 * rewrite what the teardown is about to remove.
 */
function every(clock: Clock, intervalMs: number, fn: (stopping: AbortSignal) => Promise<void>): () => Promise<void> {
  const stopping = new AbortController();
  let last = clock.now();
  let running: Promise<void> | null = null;
  const unsubscribe = clock.sweep((now) => {
    if (running !== null || now - last < intervalMs) return;
    last = now;
    // fn logs its own failures; a rejection here would only end the run.
    running = fn(stopping.signal).catch(() => {}).finally(() => {
      running = null;
    });
  });
  return async () => {
    unsubscribe();
    stopping.abort();
    await running;
  };
}
