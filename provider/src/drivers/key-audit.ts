/**
 * The audit trail of a key-manager connection: every operation reported once to the caller's
 * `onAudit` sink, as `ok`, `denied` (the backend refused: an `auth` error) or `failed`. Shared by
 * every key-manager driver so that all report alike. Events carry ids and reasons, never material.
 */
import { isBaremetalError } from "../core/errors";
import type { KeyAuditEvent, KeyOperation } from "./kinds/keymanager";

export class KeyAudit {
  constructor(
    private readonly sink: ((e: KeyAuditEvent) => void) | undefined,
    private readonly project: string,
    /** The backend family and address, e.g. `barbican https://kms:9311`. */
    private readonly backend: string,
  ) {}

  event(operation: KeyOperation, keyId: string | undefined, outcome: KeyAuditEvent["outcome"], reason?: string): void {
    if (!this.sink) return;
    const e: KeyAuditEvent = { at: new Date().toISOString(), operation, project: this.project, outcome, backend: this.backend };
    if (keyId !== undefined) e.keyId = keyId;
    if (reason !== undefined) e.reason = reason;
    try {
      this.sink(e);
    } catch {
      // The sink is the caller's: a failing sink must not turn a done operation into a failure
      // (a created key whose id is lost would be worse than a missing event).
    }
  }

  /** Runs `fn`, reporting its outcome; `idOf` names the key of a result (a created key's new id). */
  async run<T>(operation: KeyOperation, keyId: string | undefined, fn: () => Promise<T>, idOf?: (r: T) => string): Promise<T> {
    try {
      const r = await fn();
      this.event(operation, idOf ? idOf(r) : keyId, "ok");
      return r;
    } catch (e) {
      this.event(operation, keyId, isBaremetalError(e) && e.code === "auth" ? "denied" : "failed", e instanceof Error ? e.message : String(e));
      throw e;
    }
  }
}
