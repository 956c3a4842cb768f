// The block-wise learnable image cipher of medtools.imagecipher.block, in the browser, so that a
// classification model trained behind a key gets cipher images while the key stays on the
// doctor's machine. Byte for byte what `medtools encrypt --method block` makes:
//   sub-key  = HKDF-SHA256(key, salt "medtools-derive/v1", info LABEL)     (WebCrypto)
//   stream   = SHAKE256(sub-key)                                           (Keccak below, FIPS 202)
//   pixels   = stable argsort of the stream's little-endian uint64 draws   (LABEL "block/B/1/pixels")
//   negative = the stream's bits, least significant first                  (LABEL "block/B/1/negative")
// and in every B×B block, cipher position q takes the plain position pixels[q], inverted (255 − v)
// where negative[q]. WebCrypto exists only on a secure origin (HTTPS, or localhost).
"use strict";
const MedtoolsCipher = (() => {
  const MASK = (1n << 64n) - 1n;
  const RC = [
    0x0000000000000001n, 0x0000000000008082n, 0x800000000000808An, 0x8000000080008000n, 0x000000000000808Bn, 0x0000000080000001n,
    0x8000000080008081n, 0x8000000000008009n, 0x000000000000008An, 0x0000000000000088n, 0x0000000080008009n, 0x000000008000000An,
    0x000000008000808Bn, 0x800000000000008Bn, 0x8000000000008089n, 0x8000000000008003n, 0x8000000000008002n, 0x8000000000000080n,
    0x000000000000800An, 0x800000008000000An, 0x8000000080008081n, 0x8000000000008080n, 0x0000000080000001n, 0x8000000080008008n,
  ];
  // rotation offsets r[x][y] of Keccak's rho step
  const ROT = [[0, 36, 3, 41, 18], [1, 44, 10, 45, 2], [62, 6, 43, 15, 61], [28, 55, 25, 21, 56], [27, 20, 39, 8, 14]];
  const rotl = (v, n) => (n === 0 ? v : ((v << BigInt(n)) | (v >> BigInt(64 - n))) & MASK);

  function keccakF(a) { // a: 25 lanes, a[x + 5y]
    const c = new Array(5), b = new Array(25);
    for (let round = 0; round < 24; round++) {
      for (let x = 0; x < 5; x++) c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];
      for (let x = 0; x < 5; x++) {
        const d = c[(x + 4) % 5] ^ rotl(c[(x + 1) % 5], 1);
        for (let y = 0; y < 5; y++) a[x + 5 * y] ^= d;
      }
      for (let x = 0; x < 5; x++) for (let y = 0; y < 5; y++) b[y + 5 * ((2 * x + 3 * y) % 5)] = rotl(a[x + 5 * y], ROT[x][y]);
      for (let x = 0; x < 5; x++) for (let y = 0; y < 5; y++) a[x + 5 * y] = b[x + 5 * y] ^ (~b[(x + 1) % 5 + 5 * y] & MASK & b[(x + 2) % 5 + 5 * y]);
      a[0] ^= RC[round];
    }
  }

  function shake256(input, length) { // bytes in, `length` bytes out
    const rate = 136, a = new Array(25).fill(0n);
    const padded = new Uint8Array(Math.ceil((input.length + 1) / rate) * rate);
    padded.set(input);
    padded[input.length] ^= 0x1f;
    padded[padded.length - 1] ^= 0x80;
    const lane = (bytes, at) => { let v = 0n; for (let k = 7; k >= 0; k--) v = (v << 8n) | BigInt(bytes[at + k]); return v; };
    for (let start = 0; start < padded.length; start += rate) {
      for (let i = 0; i < rate / 8; i++) a[i] ^= lane(padded, start + 8 * i);
      keccakF(a);
    }
    const out = new Uint8Array(length);
    for (let done = 0; ;) {
      for (let i = 0; i < rate / 8 && done < length; i++) {
        let v = a[i];
        for (let k = 0; k < 8 && done < length; k++, v >>= 8n) out[done++] = Number(v & 0xffn);
      }
      if (done >= length) return out;
      keccakF(a);
    }
  }

  const text = (s) => new TextEncoder().encode(s);

  async function stream(key, label, length) {
    const material = await crypto.subtle.importKey("raw", key, "HKDF", false, ["deriveBits"]);
    const sub = await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: text("medtools-derive/v1"), info: text(label) }, material, 256);
    return shake256(new Uint8Array(sub), length);
  }

  async function permutation(key, label, n) {
    const bytes = await stream(key, label, 8 * n), view = new DataView(bytes.buffer);
    const draws = Array.from({ length: n }, (_, i) => view.getBigUint64(8 * i, true));
    return Array.from({ length: n }, (_, i) => i).sort((i, j) => (draws[i] < draws[j] ? -1 : draws[i] > draws[j] ? 1 : 0)); // sort is stable
  }

  async function bits(key, label, n) {
    const bytes = await stream(key, label, Math.ceil(n / 8));
    return Array.from({ length: n }, (_, i) => (bytes[i >> 3] >> (i & 7)) & 1);
  }

  // A key file's 256-bit key: 32 raw bytes, or 64 hex digits (what `medtools keys gen-key` writes).
  function parseKey(bytes) {
    if (bytes.length === 32) return bytes;
    const hex = new TextDecoder().decode(bytes).trim();
    if (/^[0-9a-fA-F]{64}$/.test(hex)) return Uint8Array.from(hex.match(/../g), (h) => parseInt(h, 16));
    throw new Error("not a key file: need 32 raw bytes or 64 hex digits (`medtools keys gen-key FILE`)");
  }

  // The key's public fingerprint: SHA-256("medtools key-id/v1\0" ‖ key), first 16 hex digits.
  async function keyId(key) {
    const prefix = text("medtools key-id/v1\0"), data = new Uint8Array(prefix.length + key.length);
    data.set(prefix);
    data.set(key, prefix.length);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
    return Array.from(digest.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // 8-bit grey levels (height × width, row-major) → cipher levels of the same shape.
  async function encryptBlock(levels, height, width, key, block) {
    if (height % block || width % block) throw new Error(height + "×" + width + " does not split into " + block + "×" + block + " blocks");
    const label = "block/" + block + "/1";
    const pixels = await permutation(key, label + "/pixels", block * block);
    const negative = await bits(key, label + "/negative", block * block);
    const out = new Uint8Array(levels.length);
    for (let by = 0; by < height; by += block) {
      for (let bx = 0; bx < width; bx += block) {
        for (let q = 0; q < block * block; q++) {
          const p = pixels[q];
          const v = levels[(by + Math.floor(p / block)) * width + bx + (p % block)];
          out[(by + Math.floor(q / block)) * width + bx + (q % block)] = negative[q] ? 255 - v : v;
        }
      }
    }
    return out;
  }

  return { shake256, parseKey, keyId, encryptBlock, available: () => !!(globalThis.crypto && crypto.subtle) };
})();
