/** The one registration list: every resource the provider serves. */
import type { ResourceDefinition } from "../core/resource";
import { nodeResource } from "./compute/node";

export const resources: readonly ResourceDefinition[] = [nodeResource];

export const resourcesByToken: ReadonlyMap<string, ResourceDefinition> = new Map(resources.map((r) => [r.token, r]));
