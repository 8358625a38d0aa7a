/**
 * Who is calling, and may they do this? The caller's identity is the provider configuration's
 * `project` and `roles`. Without a project the caller is the operator of a standalone
 * installation (as Ironic's noauth mode): every operation is allowed, and nothing about tenancy
 * is enforced. With a project, every operation is checked by the policy (Ironic's rules), at
 * preview time where the inputs allow it, and a denial names the rule that denied it.
 */
import type { ProviderConfig } from "./config";
import { BaremetalError } from "./errors";
import type { Credentials, Decision, Policy, PolicyTarget } from "./policy";

export interface Caller extends Credentials {
  /** No project configured: the standalone operator, allowed everything. */
  operator: boolean;
}

export function callerOf(config: ProviderConfig): Caller {
  return { projectId: config.project, roles: config.roles, operator: !config.project };
}

/** Throws a 403 `auth` error naming the rule when the policy denies the operation. */
export function authorize(policy: Policy, caller: Caller, operation: string, target: PolicyTarget): Decision | undefined {
  if (caller.operator) return undefined;
  const decision = policy.check(operation, caller, target);
  if (!decision.allowed) {
    throw new BaremetalError("auth", decision.explanation, { httpStatus: 403, messageId: "PolicyNotAuthorized" });
  }
  return decision;
}
