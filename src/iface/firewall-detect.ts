/**
 * Which firewall backend this node uses, decided the way the tools that share
 * the node decide it, because rules only order against rules of the same
 * backend: an iptables-nft rule "at the top" still runs after every
 * iptables-legacy rule (kubernetes-sigs/iptables-wrappers README).
 *
 *   1. kube-proxy in nftables mode (table ip/ip6 kube-proxy): nftables.
 *   2. kubelet's marker chains (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY in
 *      mangle) seen through iptables-nft: nft mode; through iptables-legacy:
 *      legacy mode (iptables-wrappers pkg/xtables/detect.go, same order).
 *   3. No marker (no kubelet yet): whichever mode holds more rules, legacy
 *      only when it holds more (the older iptables-wrapper script's count).
 *   4. No iptables at all but nft present: nftables.
 */
import type { FirewallBackend } from './firewall.js';
import type { CommandRunner } from './run-command.js';

export interface BackendChoice {
  readonly backend: FirewallBackend;
  readonly reason: string;
}

const KUBELET_CHAINS = /^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\b/m;
const KUBE_PROXY_NFT = /^table (ip|ip6) kube-proxy\b/m;

function countRules(save: string): number {
  return save.split('\n').filter((l) => l.startsWith('-')).length;
}

export async function detectFirewallBackend(run: CommandRunner): Promise<BackendChoice> {
  const tables = await run('nft', ['list', 'tables']);
  const hasNft = tables.status === 0;
  const kp = hasNft ? KUBE_PROXY_NFT.exec(tables.stdout) : null;
  if (kp !== null) return { backend: { kind: 'nftables' }, reason: `kube-proxy runs in nftables mode (${kp[0]})` };

  // mangle through nft is cheap and creates nothing; iptables-legacy-save -t mangle would load
  // the mangle table, so legacy is read whole (iptables-wrappers does the same).
  const nft4 = await run('iptables-nft-save', ['-t', 'mangle']);
  const nft6 = await run('ip6tables-nft-save', ['-t', 'mangle']);
  for (const [r, cmd] of [[nft4, 'iptables-nft-save'], [nft6, 'ip6tables-nft-save']] as const) {
    const m = r.status === 0 ? KUBELET_CHAINS.exec(r.stdout) : null;
    if (m !== null) return { backend: { kind: 'iptables', mode: 'nft' }, reason: `kubelet's ${m[1]} chain is in ${cmd} -t mangle` };
  }
  const leg4 = await run('iptables-legacy-save', []);
  const leg6 = await run('ip6tables-legacy-save', []);
  for (const [r, cmd] of [[leg4, 'iptables-legacy-save'], [leg6, 'ip6tables-legacy-save']] as const) {
    const m = r.status === 0 ? KUBELET_CHAINS.exec(r.stdout) : null;
    if (m !== null) return { backend: { kind: 'iptables', mode: 'legacy' }, reason: `kubelet's ${m[1]} chain is in ${cmd}` };
  }
  const haveNftMode = nft4.status === 0;
  const haveLegacy = leg4.status === 0;
  if (!haveNftMode && !haveLegacy) {
    const plain = await run('iptables', ['--version']);
    if (plain.status === 0) return { backend: { kind: 'iptables', mode: null }, reason: `only plain iptables is installed (${plain.stdout.trim()})` };
    if (hasNft) return { backend: { kind: 'nftables' }, reason: 'no iptables installed, nft is' };
    return { backend: { kind: 'iptables', mode: null }, reason: 'neither iptables nor nft answered; trying plain iptables' };
  }
  const legacyRules = haveLegacy ? countRules(leg4.stdout) + countRules(leg6.stdout) : 0;
  // Whole rule sets on both sides for a fair count (an nft-mode save creates nothing).
  const nftRules = haveNftMode ? countRules((await run('iptables-nft-save', [])).stdout) + countRules((await run('ip6tables-nft-save', [])).stdout) : 0;
  if (haveLegacy && (!haveNftMode || legacyRules > nftRules)) {
    return { backend: { kind: 'iptables', mode: 'legacy' }, reason: `no kubelet chains; iptables-legacy holds more rules (${legacyRules} vs ${nftRules} in nft mode)` };
  }
  return { backend: { kind: 'iptables', mode: 'nft' }, reason: `no kubelet chains; nft mode by default (${nftRules} nft-mode vs ${legacyRules} legacy rules)` };
}
