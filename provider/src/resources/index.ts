/** The one registration list: every resource the provider serves. */
import type { ResourceDefinition } from "../core/resource";
import { allocationResource } from "./compute/allocation";
import { nodeResource } from "./compute/node";

export const resources: readonly ResourceDefinition[] = [nodeResource, allocationResource];

export const resourcesByToken: ReadonlyMap<string, ResourceDefinition> = new Map(resources.map((r) => [r.token, r]));
