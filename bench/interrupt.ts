/**
 * SIGINT and SIGTERM for a bench run from the command line. Ctrl-C, `kill
 * PID`, `timeout 600 npm run ...` and a CI step's cancel signal the bench
 * process alone, not the agents, simulators and load generators it started:
 * the first signal aborts `signal`, so the run stops and stops what it
 * started; a second kills whatever is still running and exits at once.
 * Whatever is still running when the process exits (an uncaught error) is
 * killed then too.
 */
export const EXIT_INTERRUPTED = 130;

/** Kills each of `running` at once (SIGKILL), whatever fails. */
export function killAll(running: Iterable<{ killNow(): void }>): void {
  for (const x of running) {
    try {
      x.killNow();
    } catch {
      /* best effort */
    }
  }
}

export interface Interrupts {
  readonly signal: AbortSignal;
  /** Kills everything still running, synchronously. */
  killNow(): void;
  /** Removes the handlers. */
  dispose(): void;
}

/**
 * `running` is read when a kill is due, so it may change meanwhile; `lastly`
 * runs after the kill of a second signal, before the exit (what the run's own
 * `finally` would have restored).
 */
export function handleInterrupts(name: string, running: Iterable<{ killNow(): void }>, lastly: () => void = () => {}): Interrupts {
  const ac = new AbortController();
  const killNow = (): void => killAll(running);
  const onSignal = (sig: NodeJS.Signals): void => {
    if (!ac.signal.aborted) {
      process.stderr.write(`\n${name}: ${sig}: stopping (press Ctrl-C again, or signal again, to kill everything now)\n`);
      ac.abort();
      return;
    }
    killNow();
    lastly();
    process.exit(EXIT_INTERRUPTED);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', killNow);
  return {
    signal: ac.signal,
    killNow,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('exit', killNow);
    },
  };
}
