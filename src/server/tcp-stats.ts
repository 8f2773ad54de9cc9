/**
 * Counters of the client TCP listener: why connections were closed by us, and
 * newcomers turned away. Bumped only on connection events, never per query.
 */
import { defineCounters, type Counters } from '../stats/counters.js';

const CLOSED = 'nodelocal_tcp_closed_total';
const CLOSED_HELP = 'Client TCP connections closed by the agent, by reason';
const REFUSED = 'nodelocal_tcp_refused_total';
const REFUSED_HELP =
  'New client TCP connections closed at once, by reason: connection_limit, --max-tcp-connections reached and every connection busy; client_limit, its address at --max-tcp-per-client and every one of its connections busy; fd_limit, the process near its open-file limit';

export const tcpListenerCounters = defineCounters({
  /** A message was not completed within the read timeout of its first byte (slow-loris). */
  closedReadTimeout: { name: CLOSED, help: CLOSED_HELP, labels: { reason: 'read_timeout' } },
  /** No complete message and nothing in flight for the idle timeout. */
  closedIdle: { name: CLOSED, help: CLOSED_HELP, labels: { reason: 'idle' } },
  /** At the connection cap, closed to admit a new client (it was the idlest with nothing in flight). */
  closedEvicted: { name: CLOSED, help: CLOSED_HELP, labels: { reason: 'evicted' } },
  /** The client left its answers unread for the read timeout, or had left them unread longest when the listener's room past the unsent cap was full (tcp-unsent.ts). */
  closedUnsentLimit: { name: CLOSED, help: CLOSED_HELP, labels: { reason: 'unsent_limit' } },
  /** At the cap with every connection busy: the newcomer is closed at once. */
  refused: { name: REFUSED, help: REFUSED_HELP, labels: { reason: 'connection_limit' } },
  /** Its address at --max-tcp-per-client with every one of its connections busy: the newcomer is closed at once. */
  refusedClient: { name: REFUSED, help: REFUSED_HELP, labels: { reason: 'client_limit' } },
  /** The process within FD_RESERVE descriptors of its open-file limit, or accept() failed with EMFILE: the newcomer is closed at once. */
  refusedFdLimit: { name: REFUSED, help: REFUSED_HELP, labels: { reason: 'fd_limit' } },
  /** Open client connections (set on accept and close). */
  open: { name: 'nodelocal_tcp_connections', help: 'Open client TCP connections', type: 'gauge' },
});

export type TcpListenerCounter = keyof typeof tcpListenerCounters.slot;
export type TcpListenerCounters = Counters<TcpListenerCounter>;
