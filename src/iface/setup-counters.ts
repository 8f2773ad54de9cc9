/**
 * Counters of node setup (interface and firewall), shared by NodeInterface and
 * Firewall. The error counter keeps node-cache's name and `errortype` values
 * (cmd/node-cache/app: setupErrCount) so existing alerts keep firing.
 */
import { Counters, defineCounters } from '../stats/counters.js';

const ERRORS = 'coredns_nodecache_setup_errors_total';
const ERRORS_HELP = 'The number of errors during periodic network setup for node-cache';
const REPAIRS = 'nodelocal_setup_repairs_total';
const REPAIRS_HELP = 'Node setup found missing or misordered and put back (interface, addresses, firewall rules).';

export const setupCounterSchema = defineCounters({
  interfaceAdd: { name: ERRORS, help: ERRORS_HELP, labels: { errortype: 'interface_add' } },
  interfaceCheck: { name: ERRORS, help: ERRORS_HELP, labels: { errortype: 'interface_check' } },
  iptables: { name: ERRORS, help: ERRORS_HELP, labels: { errortype: 'iptables' } },
  iptablesLock: { name: ERRORS, help: ERRORS_HELP, labels: { errortype: 'iptables_lock' } },
  interfaceRepairs: { name: REPAIRS, help: REPAIRS_HELP, labels: { part: 'interface' } },
  firewallRepairs: { name: REPAIRS, help: REPAIRS_HELP, labels: { part: 'firewall' } },
});

export type SetupCounter = keyof typeof setupCounterSchema.slot;
export type SetupCounters = Counters<SetupCounter>;

export function newSetupCounters(): SetupCounters {
  return new Counters(setupCounterSchema);
}

/** Adds n to one slot (not a hot path: a few times per check interval at most). */
export function bump(c: SetupCounters, k: SetupCounter, n = 1): void {
  const i = c.schema.slot[k];
  c.values[i] = (c.values[i] ?? 0) + n;
}
