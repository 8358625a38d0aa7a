/**
 * Typed errors of the core. Every driver converts library, HTTP and CLI failures into one of
 * these, so adapters (Pulumi, Terraform) map them without knowing where they came from.
 *
 * Errors are recognised by their `code` brand (see `isBaremetalError`), not by `instanceof`, so
 * that two copies of this module (e.g. one in a test harness) still agree.
 */
export type ErrorCode =
  | "validation" // the user's input is wrong; `property` names it and `message` says how to fix it
  | "not-found" // the backend object is gone
  | "conflict" // the backend refuses the change in its current state
  | "backend" // the backend answered with an error (HTTP status, Redfish MessageId, ...)
  | "transient" // worth retrying: connection reset, 503 with a retry hint, ...
  | "auth" // credentials refused (401/403 from a BMC)
  | "tls" // TLS verification failed
  | "timeout" // an operation outlasted its deadline
  | "cancelled" // the engine asked us to stop
  | "partial-create" // created, but not fully configured: the object exists and must stay in state
  | "internal"; // a bug of ours

const BRAND = Symbol.for("pulumi-baremetal.error");

export interface BaremetalErrorOptions {
  /** The input property the error is about (dotted path, e.g. `bmc.address`). */
  property?: string;
  /** HTTP status from a backend, when there was one. */
  httpStatus?: number;
  /** Backend-specific message id (Redfish `MessageId`, ...). */
  messageId?: string;
  /** Extra backend detail (Redfish `@Message.ExtendedInfo` messages, ...). */
  details?: string[];
  /** Seconds the backend asked us to wait before retrying. */
  retryAfterSeconds?: number;
  /**
   * The request never reached the backend (connection refused, name not resolved): replaying it
   * is safe even when it was not idempotent.
   */
  unsent?: boolean;
  cause?: unknown;
}

export class BaremetalError extends Error {
  readonly [BRAND] = true;
  readonly property?: string;
  readonly httpStatus?: number;
  readonly messageId?: string;
  readonly details: string[];
  readonly retryAfterSeconds?: number;
  readonly unsent: boolean;

  constructor(
    readonly code: ErrorCode,
    message: string,
    options: BaremetalErrorOptions = {},
  ) {
    super(message, options.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = "BaremetalError";
    this.property = options.property;
    this.httpStatus = options.httpStatus;
    this.messageId = options.messageId;
    this.details = options.details ?? [];
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.unsent = options.unsent ?? false;
  }
}

export function isBaremetalError(e: unknown): e is BaremetalError {
  return typeof e === "object" && e !== null && (e as Record<symbol, unknown>)[BRAND] === true;
}

export function validationError(property: string, message: string): BaremetalError {
  return new BaremetalError("validation", message, { property });
}

/** A one-line description fit for a user: the property first, then the backend detail. */
export function describeError(e: unknown): string {
  if (!isBaremetalError(e)) return e instanceof Error ? e.message : String(e);
  const parts: string[] = [];
  if (e.property) parts.push(`${e.property}: `);
  parts.push(e.message);
  const extra: string[] = [];
  if (e.httpStatus !== undefined) extra.push(`HTTP ${e.httpStatus}`);
  if (e.messageId) extra.push(e.messageId);
  if (extra.length) parts.push(` [${extra.join(", ")}]`);
  if (e.details.length) parts.push(`: ${e.details.join("; ")}`);
  return parts.join("");
}
