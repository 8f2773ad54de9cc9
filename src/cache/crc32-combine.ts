/**
 * crc32_combine (zlib's, whose algorithm this follows): the CRC-32 of A
 * followed by B from the CRC-32 of each and B's length, in O(log len)
 * without B's bytes. A snapshot is streamed to its file body first, and its
 * header (record count, body length) is only known at the end, yet the
 * checksum covers the header first (snapshot-format.ts); node:zlib has crc32
 * but not its combine.
 */

/** The CRC-32 polynomial, reflected. */
const POLY = 0xedb88320;

/** a * b modulo the polynomial (reflected bit order: bit 31 is x^0). */
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = (b & 1) !== 0 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) modulo the polynomial, k = 0..31. */
const X2N: Uint32Array = (() => {
  const t = new Uint32Array(32);
  let p = 0x40000000; // x^1
  t[0] = p;
  for (let k = 1; k < 32; k++) t[k] = p = multModP(p, p);
  return t;
})();

/** x^(n * 2^k) modulo the polynomial. */
function x2nModP(n: number, k: number): number {
  let p = 0x80000000; // x^0
  // Division, not >>>: n may pass 2^32 (a body near the format's u32 limit, in bits).
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N[k & 31]!, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

/** The CRC-32 of A then B, given crcA, crcB and B's length in bytes. */
export function crc32Combine(crcA: number, crcB: number, lenB: number): number {
  return (multModP(x2nModP(lenB, 3), crcA) ^ crcB) >>> 0;
}
