/**
 * The throwaway server certificate of go-plugin's AutoMTLS: a fresh ECDSA P-256 key and a
 * self-signed X.509 v3 certificate, DER-encoded here by hand (node:crypto makes keys and
 * signatures but no certificates).
 *
 * What the go-plugin client checks (client.go loadServerCert, crypto/tls): it parses the DER
 * from the handshake line, trusts exactly that certificate (RootCAs), and verifies the server
 * against ServerName "localhost", so the certificate carries DNS SAN "localhost" (Go ignores the
 * common name), is valid now, and allows server authentication. It mirrors the certificate
 * go-plugin makes for itself: CN=localhost, CA (basicConstraints critical), key usages
 * digitalSignature, keyEncipherment, keyAgreement and keyCertSign, extended key usages
 * serverAuth and clientAuth.
 */
import * as crypto from "node:crypto";

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), len(body.length), body]);
}
const seq = (...c: Buffer[]) => tlv(0x30, ...c);
const set = (...c: Buffer[]) => tlv(0x31, ...c);
const explicit = (n: number, ...c: Buffer[]) => tlv(0xa0 | n, ...c);
const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, "utf8"));
const octets = (b: Buffer) => tlv(0x04, b);
const bool = (v: boolean) => tlv(0x01, Buffer.from([v ? 0xff : 0x00]));

/** A non-negative INTEGER from big-endian bytes (leading zero added when the high bit is set). */
function integer(bytes: Buffer): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0 && (bytes[i + 1] & 0x80) === 0) i++;
  const b = bytes.subarray(i);
  return tlv(0x02, b[0] & 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b);
}

function oid(dotted: string): Buffer {
  const parts = dotted.split(".").map(Number);
  const out: number[] = [40 * parts[0] + parts[1]];
  for (const p of parts.slice(2)) {
    const chunk: number[] = [p & 0x7f];
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | (v & 0x7f));
    out.push(...chunk);
  }
  return tlv(0x06, Buffer.from(out));
}

/** UTCTime (years 1950-2049) as RFC 5280 wants it: YYMMDDHHMMSSZ. */
function utcTime(d: Date): Buffer {
  const p = (n: number) => String(n).padStart(2, "0");
  const s = `${p(d.getUTCFullYear() % 100)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  return tlv(0x17, Buffer.from(s, "ascii"));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid(id), bool(true), octets(value)) : seq(oid(id), octets(value));
}

const ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";

export interface ServerCertificate {
  /** The certificate, DER (its base64 without padding is the handshake line's last field). */
  der: Buffer;
  certPem: string;
  keyPem: string;
}

/** A self-signed certificate for "localhost" (and 127.0.0.1), valid from 30 s ago for `days` days. */
export function makeServerCertificate(days = 365): ServerCertificate {
  const { publicKey, privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = publicKey.export({ type: "spki", format: "der" });
  const name = seq(set(seq(oid("2.5.4.3"), utf8("localhost"))), set(seq(oid("2.5.4.10"), utf8("baremetal"))));
  const now = Date.now();
  const serial = crypto.randomBytes(16);
  serial[0] &= 0x7f;
  const sigAlg = seq(oid(ECDSA_WITH_SHA256));

  // keyUsage bits (RFC 5280 4.2.1.3): digitalSignature(0) keyEncipherment(2) keyAgreement(4)
  // keyCertSign(5) = 1010 1100; the two trailing zero bits are "unused".
  const keyUsage = tlv(0x03, Buffer.from([0x02, 0xac]));
  const extKeyUsage = seq(oid("1.3.6.1.5.5.7.3.1"), oid("1.3.6.1.5.5.7.3.2"));
  const basicConstraints = seq(bool(true));
  // GeneralNames: [2] dNSName, [7] iPAddress (both IMPLICIT primitives)
  const san = seq(tlv(0x82, Buffer.from("localhost", "ascii")), tlv(0x87, Buffer.from([127, 0, 0, 1])));
  const ski = crypto.createHash("sha1").update(spki.subarray(spki.length - 65)).digest();

  const tbs = seq(
    explicit(0, integer(Buffer.from([2]))), // v3
    integer(serial),
    sigAlg,
    name,
    seq(utcTime(new Date(now - 30_000)), utcTime(new Date(now + days * 86_400_000))),
    name,
    spki,
    explicit(
      3,
      seq(
        extension("2.5.29.15", true, keyUsage),
        extension("2.5.29.37", false, extKeyUsage),
        extension("2.5.29.19", true, basicConstraints),
        extension("2.5.29.14", false, octets(ski)),
        extension("2.5.29.17", false, san),
      ),
    ),
  );
  const signature = crypto.sign("sha256", tbs, { key: privateKey, dsaEncoding: "der" });
  const der = seq(tbs, sigAlg, tlv(0x03, Buffer.concat([Buffer.from([0]), signature])));
  const b64 = der.toString("base64").replace(/.{1,64}/g, "$&\n");
  return {
    der,
    certPem: `-----BEGIN CERTIFICATE-----\n${b64}-----END CERTIFICATE-----\n`,
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string,
  };
}
