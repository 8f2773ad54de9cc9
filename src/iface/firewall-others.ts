/**
 * Rules of ours that an earlier run left through another firewall backend.
 * Rules only order against rules of the same backend (firewall-detect.ts), and
 * each run reads only its own: when the node moves (kube-proxy from iptables
 * to nftables, the image's iptables from legacy to nft), the old backend's
 * rules would stay for good, and their unconditional raw OUTPUT NOTRACK keeps
 * node processes' DNS to the ClusterIP out of kube-proxy's DNAT. Apply and
 * remove clear them, found by our chain and table names only.
 */
import type { FirewallBackend } from './firewall.js';
import { type Table, iptablesRemoveBatch, nftRemoveScript, parseSave } from './firewall-rules.js';
import { type CommandRunner, describeResult } from './run-command.js';

const TABLES: readonly Table[] = ['raw', 'filter', 'nat'];

export interface OtherBackends {
  /** Where rules of ours were found and removed, e.g. "iptables-legacy IPv4", "nftables". */
  readonly cleared: readonly string[];
  readonly errors: readonly string[];
}

export async function clearOtherBackends(name: string, own: FirewallBackend, run: CommandRunner, lockWaitSeconds: number): Promise<OtherBackends> {
  const cleared: string[] = [];
  const errors: string[] = [];
  for (const mode of await otherIptablesModes(own, run)) {
    for (const [family, base] of [[4, 'iptables'], [6, 'ip6tables']] as const) {
      // Whole, not per table: `-t raw` would make iptables-legacy load a table this node never used.
      const saved = await run(`${base}-${mode}-save`, []);
      if (saved.status !== 0) continue; // not installed or not usable here: nothing of ours can be there
      const batch = TABLES.map((t) => iptablesRemoveBatch(name, t, parseSave(saved.stdout, t))).filter((b): b is string => b !== null);
      if (batch.length === 0) continue;
      const cmd = `${base}-${mode}-restore`;
      const r = await run(cmd, ['-w', String(lockWaitSeconds), '--noflush'], batch.join(''));
      if (r.status === 0) cleared.push(`iptables-${mode} IPv${family}`);
      else errors.push(describeResult(cmd, r));
    }
  }
  if (own.kind !== 'nftables' && (await run('nft', ['list', 'table', 'inet', name])).status === 0) {
    const r = await run('nft', ['-f', '-'], nftRemoveScript(name));
    if (r.status === 0) cleared.push('nftables');
    else errors.push(describeResult('nft -f', r));
  }
  return { cleared, errors };
}

/** Plain `iptables` is whichever mode its --version names; when it names none, neither mode is touched (it could be ours). */
async function otherIptablesModes(own: FirewallBackend, run: CommandRunner): Promise<readonly ('legacy' | 'nft')[]> {
  if (own.kind === 'nftables') return ['legacy', 'nft'];
  if (own.mode !== null) return own.mode === 'legacy' ? ['nft'] : ['legacy'];
  const version = (await run('iptables', ['--version'])).stdout;
  if (version.includes('(legacy)')) return ['nft'];
  if (version.includes('(nf_tables)')) return ['legacy'];
  return [];
}
