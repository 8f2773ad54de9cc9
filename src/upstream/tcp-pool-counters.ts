/**
 * The counters of a TcpPool (tcp-pool.ts): the slots every upstream
 * transport declares (upstream-counters.ts) and the pool's own, bumped by the
 * pool and by its reachability tracking (tcp-reachability.ts).
 */
import { defineCounters } from '../stats/counters.js';
import { ignoredAnswersFamily, upstreamCounterDefs } from './upstream-counters.js';

const CONNECT_FAILURES = {
  name: 'nodelocal_upstream_tcp_connect_failures_total',
  help: 'TCP connects to the server that failed: refused, reset, timed out or (TLS) not verified (error), or not started: no file descriptor left to the agent (no_fds: EMFILE, ENFILE).',
} as const;

export const tcpPoolCounters = defineCounters({
  ...upstreamCounterDefs,
  // The question did not match the query sent under that id (or the frame was too short to tell).
  mismatched: { ...ignoredAnswersFamily, labels: { reason: 'mismatched' } },
  // Nothing in flight under that id: the query already timed out.
  late: { ...ignoredAnswersFamily, labels: { reason: 'late' } },
  connects: { name: 'nodelocal_upstream_tcp_connects_total', help: 'TCP connections to the cluster DNS established.' },
  reconnects: { name: 'nodelocal_upstream_tcp_reconnects_total', help: 'TCP connects started to replace a lost or failed connection.' },
  connectFailures: { ...CONNECT_FAILURES, labels: { reason: 'error' } },
  // The agent out of descriptors, not the server failing: apart, so that an operator can tell.
  connectNoFds: { ...CONNECT_FAILURES, labels: { reason: 'no_fds' } },
  rotations: {
    name: 'nodelocal_upstream_tcp_rotations_total',
    help: 'Connections drained after their query count or age, so that load spreads over the pods behind the address.',
  },
  retried: { name: 'nodelocal_upstream_tcp_retries_total', help: 'Queries sent again on another connection: theirs closed with them in flight, or stalled behind a slow query.' },
});

export type TcpPoolCounter = keyof typeof tcpPoolCounters.slot;
