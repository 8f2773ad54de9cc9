/**
 * What main.ts runs once its signal handlers are in place: flags and config
 * file -> Config, start the Agent, stop it cleanly on SIGTERM/SIGINT and
 * reload on SIGHUP (stop-signals.ts), even for a signal that came while it
 * was starting (a stop then cuts the start short) or before it (then it does
 * not start). A bad flag exits 2 naming it; a start-up failure (address in
 * use, unreadable resolv.conf, a loop) exits 1 saying why.
 */
import { readFileSync } from 'node:fs';
import { Agent, StartCut, StartupError } from './agent.js';
import { abortUntilIdle } from './agent-serving.js';
import { systemClock } from './clock.js';
import { ConfigError, helpText, loadConfig, type Config } from './config.js';
import { ConfigWatcher, SourceReads } from './config-watch.js';
import { HARD_STOP_EXTRA_MS } from './lifecycle.js';
import { createLogger, type Logger } from './log.js';
import type { HeldSignal, StopSignals } from './stop-signals.js';

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/**
 * `signals` were installed before this module loaded (main.ts); `whileStarting` sets what they tell of a signal
 * that comes before the agent has started (until then: held, a second stop exits).
 */
export async function main(argv: readonly string[], signals: StopSignals, whileStarting: (fn: (signal: HeldSignal, repeated: boolean) => void) => void): Promise<number> {
  // Every file the configuration is read from, as read: the watcher's baseline once the agent serves.
  const reads = new SourceReads();
  let loaded;
  try {
    loaded = loadConfig(argv, { readFile: reads.read });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`nodelocal-dns: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (loaded.help) {
    process.stdout.write(helpText() + '\n');
    return 0;
  }
  if (loaded.version) {
    process.stdout.write(version() + '\n');
    return 0;
  }
  const config = loaded.config;
  const logger = createLogger(config.logLevel);
  for (const warning of loaded.warnings) logger.warn('configuration', { warning });
  let agent: Agent | null = null;
  if (signals.stopHeld !== null) {
    // Came while the modules loaded or the configuration was read: nothing has started, nothing to undo.
    logger.info('signal before start-up: not starting', { signal: signals.stopHeld });
    return 0;
  }
  whileStarting((signal, repeated) => {
    if (signal === 'SIGHUP') {
      if (!repeated) logger.info('signal while starting: reloading once started', { signal });
      return;
    }
    if (repeated) {
      // The listeners may be up already (the interception starts after them): their waiting clients are answered first.
      exitAnswering(agent, logger, 'second signal while starting: answered the clients still waiting with stale or SERVFAIL, exiting at once', signal);
      return;
    }
    // The start's remaining steps are skipped, the one in progress (a firewall command) cut short, what started stopped.
    logger.info('signal while starting: cutting the start short and stopping', { signal, graceMs: config.shutdownGraceMs });
    hardStop(logger, config.shutdownGraceMs);
    agent?.cutStart(config.shutdownGraceMs);
  });
  try {
    agent = new Agent(config, { logger, setLogLevel: (l) => logger.setLevel(l), version: version(), readFile: reads.read });
    await agent.start();
  } catch (err) {
    if (err instanceof StartCut) {
      logger.info('stopped');
      return 0;
    }
    // Any failure to start is the operator's to read, not a stack trace: a StartupError says what to fix, the rest say what broke.
    const message = err instanceof StartupError ? err.message : `cannot start: ${err instanceof Error ? err.message : String(err)}`;
    logger.error('cannot start', { error: message });
    process.stderr.write(`nodelocal-dns: ${message}\n`);
    return 1;
  }
  logger.info('started', { version: version(), pid: process.pid });

  let stopping = false;
  // Reload: SIGHUP, or a change in any file the configuration comes from. Flags are read again too
  // (they do not change), so a reload always sees exactly what a restart would.
  const reload = (why: string): void => {
    if (stopping) return;
    reads.forget();
    let next: Config | null = null;
    try {
      const loaded = loadConfig(argv, { readFile: reads.read });
      for (const warning of loaded.warnings) logger.warn('configuration', { warning });
      next = loaded.config;
    } catch (err) {
      agent.reloadFailed(err instanceof Error ? err.message : String(err));
    }
    if (next !== null) {
      logger.info('reloading configuration', { why });
      agent.reload(next);
    }
    // The files of the configuration now in force (a reload may have moved them), from what this reload read.
    watcher.watch(agent.configSources, reads.last);
  };
  const watcher = new ConfigWatcher(systemClock, agent.configSources, () => reload('a configuration file changed'), undefined, reads.last);

  return new Promise<number>((resolve) => {
    signals.handle((signal) => {
      if (stopping) {
        // A second signal: the operator wants out now (node-cache's open kubernetes/dns#453 is a hang here).
        exitAnswering(agent, logger, 'second signal: answered the clients still waiting with stale or SERVFAIL, exiting at once', signal);
        return;
      }
      stopping = true;
      // The grace in force now: a reload may have changed it since start.
      const graceMs = agent.config.shutdownGraceMs;
      hardStop(logger, graceMs);
      watcher.stop();
      logger.info('stopping: finishing queries in flight', { signal, graceMs, inflight: agent.hitPath.inflight });
      agent.stop(graceMs).then(
        () => {
          logger.info('stopped');
          resolve(0);
        },
        (err: unknown) => {
          logger.error('error while stopping', { error: String(err) });
          resolve(1);
        },
      );
    }, () => reload('SIGHUP'));
  });
}

/**
 * Every part is bounded (the rules' and the link's removal by TEARDOWN_EXTRA_MS past the grace), but the pod's
 * termination must never hang on one that is not: a hard stop, HARD_STOP_EXTRA_MS past the grace from now.
 */
function hardStop(logger: Logger, graceMs: number): void {
  setTimeout(() => {
    logger.error('shutdown took too long: exiting', { graceMs });
    process.exit(1);
  }, graceMs + HARD_STOP_EXTRA_MS).unref();
}

/**
 * Exits 1 at once, the clients still waiting on this thread answered first, as at the grace's end, rather than
 * left to time out.
 */
function exitAnswering(agent: Agent | null, logger: Logger, msg: string, signal: string): void {
  const answered = agent === null ? 0 : answerWaiting(agent);
  logger.warn(msg, { signal, queries: answered });
  // dgram's send() to an address takes one more tick (its lookup callback): exit after this turn, not in it.
  setImmediate(() => process.exit(1));
}

/**
 * Every query still waiting on the main thread answered now (stale or
 * SERVFAIL). Each answer frees a TCP connection's in-flight slot, and a query
 * it had read goes in flight in turn: aborted too, as the listeners' stop
 * does (bounded: only what was read already).
 */
function answerWaiting(agent: Agent): number {
  try {
    // The batched workers' waiting clients are held on this thread too (direct.ts): answered here, the workers closed.
    return abortUntilIdle(agent.hitPath) + (agent.batched?.abandon() ?? 0);
  } catch {
    // Exiting anyway: a failure here must not keep the process up.
    return 0;
  }
}
