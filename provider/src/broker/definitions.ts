/**
 * Broker mode's resource and function definitions (issue 8): the same fields, docs, defaults,
 * normalization, preview and pending changes as the local definition (so schema, validation and
 * diff are identical in both modes, and programs work unchanged), with the handlers replaced by
 * calls to the service (./client.ts). The service runs the real handlers with its credentials and
 * the token's project; it also decides the policy, so there is no local `authorize` (a create is
 * checked by the service's `check` at preview, and every change again when it is made).
 *
 * State: the service keeps the objects' handler state; what the provider's state holds is what
 * the service answered (the same outputs as in direct mode). A refresh asks the service to read
 * the object from its backend.
 */
import { BaremetalError } from "../core/errors";
import { type FunctionDefinition, PartialCreateError, type ResourceDefinition } from "../core/resource";
import type { BrokerClient } from "./client";

const secondsLeft = (deadline: number) => Math.max(1, Math.round((deadline - Date.now()) / 1000));

export function brokeredResource(def: ResourceDefinition, client: BrokerClient): ResourceDefinition {
  return {
    ...def,
    authorize: undefined,
    async check(inputs, _ctx) {
      void _ctx;
      return client.check(def.token, inputs, "");
    },
    async create(ctx, inputs) {
      ctx.progress(`creating through the baremetal service at ${client.settings.endpoint}`);
      const o = await client.create(def.token, { inputs, name: ctx.name, urn: ctx.urn }, secondsLeft(ctx.deadline), ctx.signal);
      if (o.partial?.length) throw new PartialCreateError(o.id, o.outputs, o.partial);
      return { id: o.id, outputs: o.outputs };
    },
    async read(ctx, id) {
      const o = await client.get(def.token, id, true, secondsLeft(ctx.deadline), ctx.signal);
      return o ? { id: o.id, inputs: o.inputs, outputs: o.outputs } : undefined;
    },
    async update(ctx, id, _olds, news) {
      void _olds;
      const o = await client.update(def.token, id, news, secondsLeft(ctx.deadline), ctx.signal);
      return o.outputs;
    },
    async delete(ctx, id) {
      try {
        await client.delete(def.token, id, secondsLeft(ctx.deadline), ctx.signal);
      } catch (e) {
        // Gone already (deleted through the service by another run): what delete wanted.
        if (e instanceof BaremetalError && e.code === "not-found") return;
        throw e;
      }
    },
  };
}

export function brokeredFunction(fn: FunctionDefinition, client: BrokerClient): FunctionDefinition {
  return { ...fn, invoke: (_ctx, args) => client.invoke(fn.token, args) };
}
