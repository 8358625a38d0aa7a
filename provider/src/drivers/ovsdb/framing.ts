/**
 * Framing of OVSDB's JSON-RPC stream (RFC 7047 section 4): messages are JSON objects sent one after
 * another on the connection, with no length prefix and no delimiter (ovsdb-server sends no newline
 * between them). A message may arrive in many chunks and one chunk may carry many messages.
 *
 * The decoder scans bytes, not characters: every byte JSON gives a structural meaning (`{ } [ ] " \`)
 * is ASCII, and no byte of a multi-byte UTF-8 sequence is below 0x80, so the scan never mistakes
 * part of a character for structure, and a character split across two chunks is decoded only once
 * the whole message is there. It tracks nesting depth and whether it is inside a string (and after a
 * backslash in it); a message ends where the depth returns to zero.
 */
import { BaremetalError } from "../../core/errors";

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}

export class OvsdbProtocolError extends BaremetalError {
  constructor(message: string) {
    super("backend", message);
  }
}

export interface JsonStreamDecoderOptions {
  /** A message larger than this is refused (default 64 MiB). */
  maxMessageBytes?: number;
}

export class JsonStreamDecoder {
  private readonly maxBytes: number;
  private readonly utf8 = new TextDecoder("utf-8", { fatal: true });
  /** Bytes of the message under way from earlier chunks. */
  private parts: Buffer[] = [];
  private partBytes = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;

  constructor(opts: JsonStreamDecoderOptions = {}) {
    this.maxBytes = opts.maxMessageBytes ?? 64 * 1024 * 1024;
  }

  /** Bytes of an incomplete message held back. */
  get pendingBytes(): number {
    return this.partBytes;
  }

  /** Feeds a chunk; returns the messages it completes, in order. Throws OvsdbProtocolError on junk. */
  push(chunk: Uint8Array): unknown[] {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const out: unknown[] = [];
    let start = this.depth > 0 ? 0 : -1;
    for (let i = 0; i < buf.length; i++) {
      const b = buf[i];
      if (this.depth === 0) {
        if (isSpace(b)) continue;
        if (b !== OPEN_BRACE && b !== OPEN_BRACKET) {
          throw new OvsdbProtocolError(`malformed JSON-RPC stream: expected '{' to start a message, got ${JSON.stringify(String.fromCharCode(b))} (byte 0x${b.toString(16)})`);
        }
        start = i;
        this.depth = 1;
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === BACKSLASH) this.escaped = true;
        else if (b === QUOTE) this.inString = false;
        continue;
      }
      if (b === QUOTE) this.inString = true;
      else if (b === OPEN_BRACE || b === OPEN_BRACKET) this.depth++;
      else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
        this.depth--;
        if (this.depth === 0) {
          out.push(this.finish(buf.subarray(start, i + 1)));
          start = -1;
        }
      }
    }
    if (this.depth > 0 && start >= 0) {
      const rest = buf.subarray(start);
      this.partBytes += rest.length;
      if (this.partBytes > this.maxBytes) {
        this.reset();
        throw new OvsdbProtocolError(`JSON-RPC message larger than ${this.maxBytes} bytes`);
      }
      // Copied: the socket may reuse its buffer.
      this.parts.push(Buffer.from(rest));
    }
    return out;
  }

  /** Forgets any incomplete message (after a reconnect). */
  reset(): void {
    this.parts = [];
    this.partBytes = 0;
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
  }

  private finish(tail: Buffer): unknown {
    const bytes = this.parts.length ? Buffer.concat([...this.parts, tail]) : tail;
    this.parts = [];
    this.partBytes = 0;
    if (bytes.length > this.maxBytes) throw new OvsdbProtocolError(`JSON-RPC message larger than ${this.maxBytes} bytes`);
    let text: string;
    try {
      text = this.utf8.decode(bytes);
    } catch {
      throw new OvsdbProtocolError("malformed JSON-RPC stream: a message is not valid UTF-8");
    }
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new OvsdbProtocolError(`malformed JSON-RPC message (${(e as Error).message}): ${text.length > 200 ? `${text.slice(0, 200)}...` : text}`);
    }
  }
}
