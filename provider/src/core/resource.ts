/**
 * A resource is defined once: its token, docs, input and output fields, and its lifecycle
 * handlers. Adapters (Pulumi gRPC, later Terraform) drive these handlers; they hold no business
 * logic of their own.
 */
import type { Inventory } from "../inventory/types";
import type { Caller } from "./auth";
import type { Fields } from "./fields";
import type { ProviderConfig } from "./config";
import type { Policy } from "./policy";
import type { CheckFailure } from "./validate";

export type Props = Record<string, unknown>;

/** What every handler may use, also at preview (Check): nothing here touches a machine. */
export interface ProviderContext {
  /** The configured provider. */
  readonly config: ProviderConfig;
  /** Who runs this (from the provider's `project` and `roles`). */
  readonly caller: Caller;
  /** The effective policy (defaults, or the provider's `policyFile`). */
  readonly policy: Policy;
  /** The shared inventory, opened on first use. */
  inventory(): Promise<Inventory>;
}

/** What a handler may use while it runs. */
export interface OperationContext extends ProviderContext {
  /** The resource's name in the program (its URN's last part). */
  readonly name: string;
  /** The resource's URN: unique per stack, stable across runs. */
  readonly urn: string;
  /** Aborted when the engine cancels or the deadline passes. */
  readonly signal: AbortSignal;
  /** When the operation must be done by (from custom timeouts or the resource default). */
  readonly deadline: number;
  /** Progress for the user (shown as the resource's status line while it runs). */
  progress(message: string): void;
  /** A warning the user should read. */
  warn(message: string): void;
}

export interface CreateResult {
  id: string;
  /** The full state: inputs as stored plus outputs. */
  outputs: Props;
}

export interface ReadResult {
  id: string;
  /** The inputs as they are now on the backend (declared fields reflect the real value). */
  inputs: Props;
  outputs: Props;
}

export interface ResourceDefinition {
  /** `baremetal:<module>:<Name>`; module = folder under resources/ = SDK namespace. */
  token: string;
  description: string;
  inputs: Fields;
  /** Computed-only properties; the state holds inputs and these. */
  outputs: Fields;
  /** Delete the old object before creating its replacement (names or hardware that cannot be doubled). */
  deleteBeforeReplace?: boolean;
  /** Default time for create/update/delete, in seconds, when the program sets no custom timeout. */
  defaultTimeoutSeconds: number;
  /**
   * Checks beyond field validation: cross-field rules and the policy (at preview time). Never
   * touches a machine; may read the inventory. Throws an `auth` error when the policy denies.
   */
  check?(inputs: Props, ctx: ProviderContext): Promise<CheckFailure[]> | CheckFailure[];
  /**
   * The policy check of a change, run by the adapter at preview time (create and update
   * previews) and again before the change is made (and before delete). Throws an `auth` error
   * naming the rule when the caller may not. `state` is the current state (update, delete).
   */
  authorize?(ctx: ProviderContext, change: "create" | "update" | "delete", inputs: Props, state?: Props): Promise<void> | void;
  /**
   * Changes the state itself asks for, beyond the inputs' diff (e.g. a key rotation that fell due
   * since the last run): the adapter adds them to the diff, so `up` runs an update.
   */
  pendingChanges?(state: Props, news: Props): { path: string; reason: string }[];
  /** Canonical form of valid inputs (e.g. a URL without its trailing slash), so equal meanings diff equal. */
  normalize?(inputs: Props): Props;
  /** Outputs known at preview time without touching a backend; the rest are unknown. */
  preview?(inputs: Props): Props;
  create(ctx: OperationContext, inputs: Props): Promise<CreateResult>;
  /**
   * Reads the object back. `inputs` are the stored inputs (refresh) or undefined (import by id
   * alone). Returns undefined when the object is gone.
   */
  read(ctx: OperationContext, id: string, inputs: Props | undefined, state: Props | undefined): Promise<ReadResult | undefined>;
  update(ctx: OperationContext, id: string, olds: Props, news: Props, oldState: Props): Promise<Props>;
  delete(ctx: OperationContext, id: string, inputs: Props, state: Props): Promise<void>;
}

/**
 * Thrown by create when the object exists but could not be fully configured: the adapter keeps
 * it in state (with these outputs) and reports the error, so the next run converges instead of
 * creating a second one.
 */
export class PartialCreateError extends Error {
  constructor(
    readonly id: string,
    readonly outputs: Props,
    readonly reasons: string[],
  ) {
    super(reasons.join("; "));
    this.name = "PartialCreateError";
  }
}

export function isPartialCreate(e: unknown): e is PartialCreateError {
  return e instanceof Error && e.name === "PartialCreateError" && "id" in e && "outputs" in e;
}

/** A function (Pulumi invoke / Terraform data source): reads, never changes anything. */
export interface FunctionDefinition {
  /** `baremetal:<module>:get<Name>`. */
  token: string;
  description: string;
  inputs: Fields;
  outputs: Fields;
  invoke(ctx: ProviderContext, args: Props): Promise<Props>;
}
