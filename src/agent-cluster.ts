/**
 * The agent's two watches of the cluster API, created at start when there
 * is a cluster config: the view behind the cluster-records fallback, and
 * the pod watch behind --metrics-by-namespace. Separate from agent.ts
 * because deciding whether there is a cluster to watch (and saying so once)
 * is its own concern; the Agent only places what comes back in its order.
 */
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { KubeApi, loadClusterConfig } from './kube/client.js';
import { PodWatch, podWatchCounterSchema } from './kube/pods.js';
import { ClusterView } from './kube/view.js';
import { KubeWatch, watchCounterSchema } from './kube/watch.js';
import { StartupError } from './lifecycle.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './ops/agent-metrics.js';
import type { NamespaceRequests } from './ops/namespace-metrics.js';
import { Counters } from './stats/counters.js';

export interface ClusterWatchDeps {
  readonly metrics: AgentMetrics;
  readonly clock: Clock;
  readonly logger: Logger;
}

/**
 * The cluster view and its API watch, when there is a cluster to watch.
 * Without one (null) the agent still runs, and says once that the fallback is off.
 */
export async function startView(c: Config, d: ClusterWatchDeps): Promise<{ view: ClusterView; watch: KubeWatch } | null> {
  if (!c.kube) {
    d.logger.info('cluster-records fallback off (--no-kube): cluster names are answered by the cluster DNS only');
    return null;
  }
  const cfg = await loadClusterConfig({ kubeconfig: c.kubeconfig });
  if (cfg.kind === 'error') throw new StartupError(`--kubeconfig: ${cfg.reason}`);
  if (cfg.kind === 'none') {
    d.logger.info('cluster-records fallback off: no cluster config (not in a cluster and no --kubeconfig)', { reason: cfg.reason });
    return null;
  }
  const view = new ClusterView();
  const watchCounters = new Counters(watchCounterSchema);
  d.metrics.add(watchCounters, false);
  const watch = new KubeWatch(new KubeApi(cfg), view, { clock: d.clock, log: d.logger, counters: watchCounters });
  d.logger.info('cluster-records fallback on: watching the API', { server: cfg.server, source: cfg.source, auth: cfg.auth });
  return { view, watch };
}

/**
 * --metrics-by-namespace: a watch of this node's pods, on the same cluster
 * config as the view (independent of --kube: it is a metric, not the
 * fallback). No cluster config is not worth refusing to serve DNS for:
 * said once, and every query counts as "_unknown" (null).
 */
export async function startPodWatch(c: Config, table: NamespaceRequests | null, d: ClusterWatchDeps): Promise<PodWatch | null> {
  if (table === null) return null;
  const cfg = await loadClusterConfig({ kubeconfig: c.kubeconfig });
  if (cfg.kind !== 'ok') {
    d.logger.error('--metrics-by-namespace: no cluster config, every request counts as "_unknown"', { reason: cfg.reason });
    return null;
  }
  const counters = new Counters(podWatchCounterSchema);
  d.metrics.add(counters, false);
  const watch = new PodWatch(new KubeApi(cfg), table.pods, { nodeName: c.nodeName, clock: d.clock, log: d.logger, counters });
  d.logger.info('requests by namespace on: watching the pods of this node', { node: c.nodeName, maxNamespaces: c.metricsNamespacesMax });
  return watch;
}
