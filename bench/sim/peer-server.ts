/**
 * Both simulated zones on one address, no added latency, as a standalone
 * process: `node dist/bench/sim/peer-server.js --host 127.0.0.1 --port N`.
 * It is the harness's own stand-in for a `--peer-cmd` (the test suite starts
 * it that way), and a quick way to check that a peer setup works before
 * pointing the bench at dnsmasq or unbound. Stops on SIGTERM/SIGINT.
 */
import { SimDnsServer } from '../../testkit/dns-server.js';
import { DEFAULT_ZONES, combinedZoneHandler } from './zones.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? def) : def;
}

async function main(): Promise<void> {
  const host = arg('host', '127.0.0.1');
  const port = Number(arg('port', '0'));
  const zones = {
    ...DEFAULT_ZONES,
    namespaces: Number(arg('namespaces', String(DEFAULT_ZONES.namespaces))),
    servicesPerNamespace: Number(arg('services', String(DEFAULT_ZONES.servicesPerNamespace))),
    fallbackServices: Number(arg('fallback-services', String(DEFAULT_ZONES.fallbackServices))),
  };
  const server = await SimDnsServer.start({ host, port, handler: combinedZoneHandler(zones) });
  // The per-name counters are of no use here; keep memory flat under unique-name load.
  const timer = setInterval(() => server.resetStats(), 2000);
  process.stdout.write(`peer-server listening on ${server.host}:${server.port}\n`);
  const stop = (): void => {
    clearInterval(timer);
    void server.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`peer-server: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
