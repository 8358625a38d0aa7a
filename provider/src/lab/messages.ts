/**
 * Redfish messages and error bodies of the lab BMC (DSP0266 "Error responses"; message ids of the
 * DMTF Base message registry). The message texts are our own wording of what each id means.
 */

export const BASE_REGISTRY = "Base.1.15.0";

export type Json = Record<string, unknown>;

export interface LabMessage {
  MessageId: string;
  Message: string;
  MessageArgs?: string[];
  MessageSeverity: "OK" | "Warning" | "Critical";
  Resolution: string;
  RelatedProperties?: string[];
}

type Spec = { severity: LabMessage["MessageSeverity"]; text: (a: string[]) => string; resolution: string };

/** The Base registry messages the lab uses, keyed by message name. */
const SPECS: Record<string, Spec> = {
  Success: { severity: "OK", text: () => "The request completed successfully.", resolution: "None" },
  Created: { severity: "OK", text: () => "The resource was created.", resolution: "None" },
  GeneralError: { severity: "Critical", text: () => "The request failed; see the other messages for details.", resolution: "None" },
  InternalError: { severity: "Critical", text: () => "The lab BMC hit an internal error.", resolution: "Retry; report it if it persists." },
  ResourceMissingAtURI: { severity: "Critical", text: (a) => `There is no resource at the URI ${a[0]}.`, resolution: "Use a URI the service links to." },
  OperationNotAllowed: { severity: "Critical", text: (a) => `The method ${a[0]} is not allowed on ${a[1]}.`, resolution: "Use a method listed in the Allow header." },
  MalformedJSON: { severity: "Critical", text: () => "The request body is not valid JSON.", resolution: "Send a well-formed JSON object." },
  EmptyJSON: { severity: "Warning", text: () => "The request body is an empty JSON object.", resolution: "Send the properties to change." },
  PropertyUnknown: { severity: "Warning", text: (a) => `The property ${a[0]} is not a property of this resource.`, resolution: "Remove it from the request." },
  PropertyNotWritable: { severity: "Warning", text: (a) => `The property ${a[0]} is read-only.`, resolution: "Remove it from the request." },
  PropertyValueNotInList: {
    severity: "Warning",
    text: (a) => `The value ${a[0]} of the property ${a[1]} is not one of its allowable values.`,
    resolution: "Choose a value from the property's @Redfish.AllowableValues.",
  },
  PropertyValueTypeError: { severity: "Warning", text: (a) => `The value ${a[0]} of the property ${a[1]} has the wrong type.`, resolution: "Send a value of the property's type." },
  PropertyValueFormatError: { severity: "Warning", text: (a) => `The value ${a[0]} of the property ${a[1]} has the wrong format.`, resolution: "Correct the value's format." },
  PropertyMissing: { severity: "Warning", text: (a) => `The required property ${a[0]} is missing from the request.`, resolution: "Add the property." },
  PropertyValueConflict: {
    severity: "Warning",
    text: (a) => `The property ${a[0]} cannot be changed now because of ${a[1]}.`,
    resolution: "Retry when the resource's state allows the change.",
  },
  ActionParameterMissing: { severity: "Critical", text: (a) => `The action ${a[0]} needs the parameter ${a[1]}.`, resolution: "Add the parameter." },
  ActionParameterNotSupported: {
    severity: "Warning",
    text: (a) => `The parameter ${a[0]} is not supported by the action ${a[1]}.`,
    resolution: "Remove the parameter.",
  },
  ActionParameterValueNotInList: {
    severity: "Warning",
    text: (a) => `The value ${a[0]} of the parameter ${a[1]} of the action ${a[2]} is not one of its allowable values.`,
    resolution: "Choose a value from the parameter's @Redfish.AllowableValues.",
  },
  ActionParameterValueTypeError: {
    severity: "Warning",
    text: (a) => `The value ${a[0]} of the parameter ${a[1]} of the action ${a[2]} has the wrong type.`,
    resolution: "Send a value of the parameter's type.",
  },
  ActionNotSupported: { severity: "Critical", text: (a) => `The action ${a[0]} is not supported here.`, resolution: "Use an action the resource lists." },
  PreconditionFailed: {
    severity: "Critical",
    text: () => "The ETag in If-Match does not match the resource's current ETag.",
    resolution: "Read the resource again and retry with its current ETag.",
  },
  ResourceInUse: { severity: "Warning", text: (a) => `The change could not be made because the resource is busy: ${a[0]}.`, resolution: "Retry later." },
  ResourceInStandby: { severity: "Critical", text: () => "The resource is in standby and cannot do this now.", resolution: "Bring the resource out of standby first." },
  ResourceAlreadyExists: { severity: "Critical", text: (a) => `A resource with ${a[0]} = ${a[1]} already exists.`, resolution: "Use another value." },
  CreateLimitReachedForResource: { severity: "Critical", text: () => "No more resources of this kind can be created.", resolution: "Delete one first." },
  NoValidSession: {
    severity: "Critical",
    text: () => "There is no valid session or credentials for this request.",
    resolution: "Log in (POST to the Sessions collection) or send valid Basic credentials.",
  },
  ResourceAtUriUnauthorized: { severity: "Critical", text: (a) => `The credentials given for ${a[0]} were refused.`, resolution: "Check the user name and password." },
  InsufficientPrivilege: { severity: "Critical", text: () => "The account lacks the privilege for this request.", resolution: "Use an account with a role that has it." },
  SessionLimitExceeded: {
    severity: "Critical",
    text: () => "No session was created: the service already has as many sessions as it allows.",
    resolution: "Log out unused sessions, or wait for them to time out, and retry.",
  },
  ServiceTemporarilyUnavailable: {
    severity: "Critical",
    text: (a) => `The service is temporarily unavailable. Retry in ${a[0]} seconds.`,
    resolution: "Wait the given number of seconds and retry.",
  },
  AccountRemoved: { severity: "OK", text: () => "The account was removed.", resolution: "None" },
  AccountModified: { severity: "OK", text: () => "The account was modified.", resolution: "None" },
  AccountForSessionNoLongerExists: { severity: "OK", text: () => "The session's account was removed, and the session with it.", resolution: "None" },
  TaskStarted: { severity: "OK", text: (a) => `The task ${a[0]} started.`, resolution: "None" },
  OperationTimeout: { severity: "Critical", text: () => "The operation timed out.", resolution: "Retry." },
};

export function message(name: string, args: string[] = [], related?: string[]): LabMessage {
  const spec = SPECS[name];
  if (!spec) throw new Error(`lab BMC: no message ${name}`);
  const m: LabMessage = {
    MessageId: `${BASE_REGISTRY}.${name}`,
    Message: spec.text(args),
    MessageSeverity: spec.severity,
    Resolution: spec.resolution,
  };
  if (args.length) m.MessageArgs = args;
  if (related?.length) m.RelatedProperties = related;
  return m;
}

/** The body of a Redfish error response: `{ error: { code, message, @Message.ExtendedInfo } }`. */
export function errorBody(...messages: LabMessage[]): Json {
  const first = messages[0] ?? message("GeneralError");
  return {
    error: {
      code: messages.length === 1 ? first.MessageId : `${BASE_REGISTRY}.GeneralError`,
      message: messages.length === 1 ? first.Message : "Several errors occurred; see @Message.ExtendedInfo.",
      "@Message.ExtendedInfo": messages.map((m) => ({ "@odata.type": "#Message.v1_1_1.Message", ...m })),
    },
  };
}

/** A 2xx body that only carries messages (e.g. `Success`). */
export function messagesBody(...messages: LabMessage[]): Json {
  return { "@Message.ExtendedInfo": messages.map((m) => ({ "@odata.type": "#Message.v1_1_1.Message", ...m })) };
}

/** An HTTP answer of the emulator. */
export interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export class RedfishError extends Error {
  constructor(
    readonly status: number,
    readonly messages: LabMessage[],
    readonly headers: Record<string, string> = {},
  ) {
    super(messages[0]?.Message ?? `HTTP ${status}`);
  }
  reply(): Reply {
    return { status: this.status, body: errorBody(...this.messages), headers: this.headers };
  }
}

/** Throws a Redfish error answer from inside a handler. */
export function fail(status: number, name: string, args: string[] = [], related?: string[], headers?: Record<string, string>): never {
  throw new RedfishError(status, [message(name, args, related)], headers);
}
