/** The one registration list: every resource the provider serves. */
import type { FunctionDefinition, ResourceDefinition } from "../core/resource";
import { allocationResource } from "./compute/allocation";
import { consoleAccessResource } from "./compute/console";
import { backupResource } from "./backup/backup";
import { backupPolicyResource } from "./backup/policy";
import { deploymentResource } from "./compute/deployment";
import { getNodesFunction } from "./compute/get-nodes";
import { leaseResource } from "./compute/lease";
import { nodeResource } from "./compute/node";
import { encryptionKeyResource } from "./keys/encryption-key";
import { keyRotationPolicyResource } from "./keys/rotation-policy";
import { networkAttachmentResource } from "./network/attachment";
import { portResource } from "./network/port";
import { tenantNetworkResource } from "./network/tenant-network";
import { volumeResource } from "./storage/volume";
import { volumeAttachmentResource } from "./storage/volume-attachment";

export const resources: readonly ResourceDefinition[] = [nodeResource, allocationResource, deploymentResource, consoleAccessResource, portResource, tenantNetworkResource, networkAttachmentResource, encryptionKeyResource, volumeResource, volumeAttachmentResource, keyRotationPolicyResource, backupResource, backupPolicyResource, leaseResource];

export const resourcesByToken: ReadonlyMap<string, ResourceDefinition> = new Map(resources.map((r) => [r.token, r]));

export const functions: readonly FunctionDefinition[] = [getNodesFunction];

export const functionsByToken: ReadonlyMap<string, FunctionDefinition> = new Map(functions.map((f) => [f.token, f]));
