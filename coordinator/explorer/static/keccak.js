// Keccak-256 (the Ethereum hash: original Keccak padding 0x01, not SHA3's 0x06),
// in plain JavaScript so that the explorer checks proofs without any library or
// network fetch. 64-bit lanes as BigInt: a few hundred microseconds per block,
// plenty for Merkle proofs (a handful of 64-byte hashes) and job inputs (<= 4 KiB).
"use strict";
(function (root) {
  const MASK = (1n << 64n) - 1n;
  const RC = [
    0x0000000000000001n, 0x0000000000008082n, 0x800000000000808An, 0x8000000080008000n,
    0x000000000000808Bn, 0x0000000080000001n, 0x8000000080008081n, 0x8000000000008009n,
    0x000000000000008An, 0x0000000000000088n, 0x0000000080008009n, 0x000000008000000An,
    0x000000008000808Bn, 0x800000000000008Bn, 0x8000000000008089n, 0x8000000000008003n,
    0x8000000000008002n, 0x8000000000000080n, 0x000000000000800An, 0x800000008000000An,
    0x8000000080008081n, 0x8000000000008080n, 0x0000000080000001n, 0x8000000080008008n,
  ];
  // rotation offsets r[x + 5y]
  const R = [0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14]
    .map(BigInt);
  const RATE = 136; // bytes: 1600 - 2 * 256 bits

  function rot(x, n) {
    return n === 0n ? x : ((x << n) | (x >> (64n - n))) & MASK;
  }

  function permute(A) {
    const C = new Array(5), B = new Array(25);
    for (let round = 0; round < 24; round++) {
      for (let x = 0; x < 5; x++) C[x] = A[x] ^ A[x + 5] ^ A[x + 10] ^ A[x + 15] ^ A[x + 20];
      for (let x = 0; x < 5; x++) {
        const d = C[(x + 4) % 5] ^ rot(C[(x + 1) % 5], 1n);
        for (let y = 0; y < 25; y += 5) A[x + y] ^= d;
      }
      for (let x = 0; x < 5; x++) {
        for (let y = 0; y < 5; y++) B[y + 5 * ((2 * x + 3 * y) % 5)] = rot(A[x + 5 * y], R[x + 5 * y]);
      }
      for (let y = 0; y < 25; y += 5) {
        for (let x = 0; x < 5; x++) A[x + y] = B[x + y] ^ ((~B[(x + 1) % 5 + y] & MASK) & B[(x + 2) % 5 + y]);
      }
      A[0] ^= RC[round];
    }
  }

  // keccak256(Uint8Array) -> Uint8Array(32)
  function keccak256(bytes) {
    const padded = new Uint8Array(Math.floor(bytes.length / RATE) * RATE + RATE);
    padded.set(bytes);
    padded[bytes.length] ^= 0x01;
    padded[padded.length - 1] ^= 0x80;
    const A = new Array(25).fill(0n);
    for (let off = 0; off < padded.length; off += RATE) {
      for (let i = 0; i < RATE / 8; i++) {
        let lane = 0n;
        for (let b = 7; b >= 0; b--) lane = (lane << 8n) | BigInt(padded[off + 8 * i + b]);
        A[i] ^= lane;
      }
      permute(A);
    }
    const out = new Uint8Array(32);
    for (let i = 0; i < 4; i++) {
      let lane = A[i];
      for (let b = 0; b < 8; b++) { out[8 * i + b] = Number(lane & 0xffn); lane >>= 8n; }
    }
    return out;
  }

  root.keccak256 = keccak256;
})(typeof window !== "undefined" ? window : globalThis);
