/** The counters of HostResolvers (host-resolvers.ts): the shared upstream ones, and what only UDP tries with failover have. */
import { defineCounters } from '../stats/counters.js';
import { ignoredAnswersFamily, upstreamCounterDefs } from './upstream-counters.js';

const TRY_FAILURES = {
  name: 'nodelocal_upstream_try_failures_total',
  help: 'Tries given up: no answer within the try timeout (it keeps listening for a late one), an ICMP error or broken TCP connection, or no file descriptor left to the agent (no_fds: EMFILE, ENFILE).',
} as const;

export const hostResolversCounters = defineCounters({
  ...upstreamCounterDefs,
  // RFC 5452: wrong source, id or question.
  spoofed: { ...ignoredAnswersFamily, labels: { reason: 'spoofed' } },
  // The server's reply to a try already over: answered by another server or given up (TcpPool's reason too).
  late: { ...ignoredAnswersFamily, labels: { reason: 'late' } },
  tcpFallbacks: { name: 'nodelocal_upstream_tcp_fallbacks_total', help: 'Truncated (TC=1) UDP answers retried over TCP at the same server.' },
  ednsFallbacks: {
    name: 'nodelocal_upstream_edns_fallbacks_total',
    help: 'FORMERR or NOTIMP answers without OPT to a query with EDNS (a server from before EDNS, RFC 6891 7): the same server asked again without OPT, and after a FORMERR so by every exchange for 15 minutes.',
  },
  failovers: { name: 'nodelocal_upstream_failovers_total', help: 'Moves to another server after a timeout, an error or a SERVFAIL/NOTIMP/REFUSED answer.' },
  attemptTimeouts: { ...TRY_FAILURES, labels: { reason: 'timeout' } },
  attemptErrors: { ...TRY_FAILURES, labels: { reason: 'error' } },
  // The agent out of descriptors, not the server failing: apart, so that an operator can tell.
  attemptNoFds: { ...TRY_FAILURES, labels: { reason: 'no_fds' } },
  openSockets: {
    name: 'nodelocal_upstream_open_sockets',
    help: 'Tries listening for an answer: an id on a shared UDP socket, or a TCP connection of their own.',
    type: 'gauge',
  },
  udpSockets: {
    name: 'nodelocal_upstream_udp_sockets',
    help: 'UDP sockets open to the host resolvers, each shared by a few tries and replaced after some tries or an age (a fresh random source port).',
    type: 'gauge',
  },
});

export type HostResolversCounter = keyof typeof hostResolversCounters.slot;
