/**
 * The transport of the Terraform provider: hashicorp/go-plugin's process protocol, as OpenTofu's
 * plugin client (go-plugin v1.7) drives it, and the tfplugin6.Provider gRPC service over it.
 *
 * The dance (go-plugin server.go/client.go):
 * 1. OpenTofu starts the provider with TF_PLUGIN_MAGIC_COOKIE=<the providers' cookie>,
 *    PLUGIN_PROTOCOL_VERSIONS (e.g. "5,6"), PLUGIN_MIN_PORT/PLUGIN_MAX_PORT and, with AutoMTLS
 *    (the default; off with TF_DISABLE_PLUGIN_TLS=1 in OpenTofu's environment), its client
 *    certificate in PEM as PLUGIN_CLIENT_CERT. Without the cookie the process was started by
 *    hand: say so on stderr and exit 1.
 * 2. The provider listens (here 127.0.0.1:<ephemeral port>, or a unix socket when asked), and
 *    prints one line on stdout: `1|6|tcp|127.0.0.1:PORT|grpc|<server cert DER, base64, no padding>`
 *    (core protocol 1, app protocol 6; the last field empty without TLS). Nothing else may go to
 *    stdout afterwards: later writes to process.stdout are sent down the GRPCStdio stream instead.
 * 3. With AutoMTLS, the server presents a fresh self-signed certificate (tls-cert.ts) and requires
 *    a client certificate signed by (i.e. equal to) PLUGIN_CLIENT_CERT.
 * 4. The client opens plugin.GRPCStdio/StreamStdio and plugin.GRPCBroker/StartStream (both kept
 *    open, idle), then calls tfplugin6.Provider; at the end of every phase it calls
 *    plugin.GRPCController/Shutdown, waits up to 2 s for the process to exit, then kills it.
 *    go-plugin's Ping is grpc.health.v1.Health/Check for service "plugin".
 * SIGINT is ignored (as go-plugin does): Ctrl-C reaches the whole process group, and OpenTofu
 * then asks the provider to stop through StopProvider and still needs it to finish the phase.
 *
 * Handlers get the request as a protobufjs plain object (see proto.ts decodeMessage) and a
 * context whose `signal` aborts on StopProvider; they return the response as a plain object.
 * Without a handler an RPC answers UNIMPLEMENTED, except where OpenTofu treats that as a failure
 * although a provider may simply have nothing to say (see DEFAULT_EMPTY). A handler that throws
 * answers with an error diagnostic when the response has `diagnostics` (CallFunction: its
 * `error.text`; StopProvider: its `Error`), with a gRPC UNKNOWN error otherwise.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { isBaremetalError } from "../../core/errors";
import { decodeMessage, encodeMessage, hasField, PROVIDER_RPCS, rpcTypes, Severity, type Diagnostic, type RpcName } from "./proto";
import { makeServerCertificate } from "./tls-cert";

export type { RpcName } from "./proto";

/** The go-plugin handshake values OpenTofu and Terraform use for providers. */
export const MAGIC_COOKIE_KEY = "TF_PLUGIN_MAGIC_COOKIE";
export const MAGIC_COOKIE_VALUE = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
export const CORE_PROTOCOL_VERSION = 1;
export const APP_PROTOCOL_VERSION = 6;

export interface CallContext {
  rpc: RpcName;
  /** Aborted once OpenTofu calls StopProvider (the user pressed Ctrl-C) or the call was cancelled. */
  signal: AbortSignal;
}
export type Handler = (req: any, ctx: CallContext) => Promise<any>;
export type Handlers = Partial<Record<RpcName, Handler>>;

/**
 * RPCs that answer an empty response when there is no handler: OpenTofu calls them on every
 * provider and fails on UNIMPLEMENTED, while "no diagnostics" / "no functions" is a valid answer.
 * (GetResourceIdentitySchemas is not here: OpenTofu reads UNIMPLEMENTED as "no identities".)
 */
export const DEFAULT_EMPTY: readonly RpcName[] = [
  "ValidateProviderConfig",
  "ValidateResourceConfig",
  "ValidateDataResourceConfig",
  "ValidateEphemeralResourceConfig",
  "ConfigureProvider",
  "CloseEphemeralResource",
  "GetFunctions",
  "StopProvider",
];

export interface ServeOptions {
  /** Where the go-plugin variables are read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** "tcp" (127.0.0.1, default) or "unix" (a socket in PLUGIN_UNIX_SOCKET_DIR, else the temp dir). */
  network?: "tcp" | "unix";
  /** Exit the process once Shutdown was answered and the server stopped (default true). */
  exitOnShutdown?: boolean;
  /** Called on Shutdown, before the server stops. */
  onShutdown?: () => void | Promise<void>;
  /** Called once the handshake line is out. */
  onReady?: (info: ReadyInfo) => void;
}

export interface ReadyInfo {
  network: "tcp" | "unix";
  address: string;
  tls: boolean;
  /** Milliseconds from the process's start (performance.timeOrigin) to the handshake line. */
  handshakeMs: number;
  /** Of which generating the server certificate. */
  certMs: number;
}

export interface PluginServer {
  /** Stops serving (ends the stdio and broker streams, closes the listener); does not exit. */
  stop(): Promise<void>;
  readonly address: string;
}

function refuse(message: string): never {
  process.stderr.write(message);
  process.exit(1);
}

/** The error diagnostic a failed handler answers with. */
export function errorDiagnostic(err: unknown): Diagnostic {
  const summary = err instanceof Error ? err.message : String(err);
  const detail = isBaremetalError(err) && err.details.length > 0 ? err.details.join("\n") : "";
  return { severity: Severity.ERROR, summary: summary || "provider error", detail };
}

function failureResponse(rpc: RpcName, err: unknown): object | undefined {
  const { response } = rpcTypes(rpc);
  if (hasField(response, "diagnostics")) return { diagnostics: [errorDiagnostic(err)] };
  if (rpc === "CallFunction") return { error: { text: errorDiagnostic(err).summary } };
  if (rpc === "StopProvider") return { Error: errorDiagnostic(err).summary };
  return undefined;
}

const passThrough = (b: Buffer) => b;
function unary(pathName: string, requestType: string): grpc.MethodDefinition<any, Buffer> {
  return {
    path: pathName,
    requestStream: false,
    responseStream: false,
    requestSerialize: (v: unknown) => encodeMessage(requestType, v),
    requestDeserialize: (b: Buffer) => decodeMessage(requestType, b),
    // handlers' answers are encoded by the wrapper (so that an unencodable answer becomes a diagnostic)
    responseSerialize: passThrough,
    responseDeserialize: passThrough,
  };
}

/**
 * Does the go-plugin handshake and serves `handlers` until Shutdown (then exits, unless
 * exitOnShutdown is false). Refuses (stderr, exit 1) when not started by a plugin client.
 */
export async function servePlugin(handlers: Handlers, opts: ServeOptions = {}): Promise<PluginServer> {
  const env = opts.env ?? process.env;
  if (env[MAGIC_COOKIE_KEY] !== MAGIC_COOKIE_VALUE) {
    refuse(
      "This is the baremetal provider plugin for OpenTofu and Terraform: it is started by them, not by hand.\n" +
        "Add it to a configuration's required_providers and run `tofu init`, `tofu plan` or `tofu apply`.\n",
    );
  }
  const offered = (env.PLUGIN_PROTOCOL_VERSIONS ?? "").split(",").map((v) => v.trim()).filter(Boolean);
  if (offered.length > 0 && !offered.includes(String(APP_PROTOCOL_VERSION))) {
    refuse(
      `This provider speaks plugin protocol ${APP_PROTOCOL_VERSION} only; the client offered ${offered.join(", ")}. ` +
        "It needs OpenTofu >= 1.6 or Terraform >= 1.0.\n",
    );
  }

  const stopController = new AbortController();
  const server = new grpc.Server({
    "grpc.max_receive_message_length": 256 << 20,
    "grpc.max_send_message_length": 256 << 20,
  });

  // tfplugin6.Provider
  const providerService: Record<string, grpc.MethodDefinition<any, Buffer>> = {};
  const providerImpl: grpc.UntypedServiceImplementation = {};
  for (const rpc of PROVIDER_RPCS) {
    const { request, response } = rpcTypes(rpc);
    providerService[rpc] = unary(`/tfplugin6.Provider/${rpc}`, request);
    const handler = handlers[rpc];
    providerImpl[rpc] = (call: grpc.ServerUnaryCall<any, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      if (rpc === "StopProvider") stopController.abort(new Error("StopProvider"));
      if (!handler) {
        if (DEFAULT_EMPTY.includes(rpc)) callback(null, encodeMessage(response, {}));
        else callback({ code: grpc.status.UNIMPLEMENTED, details: `${rpc} is not implemented by this provider` });
        return;
      }
      const callAbort = new AbortController();
      call.on("cancelled", () => callAbort.abort(new Error("cancelled")));
      const signal = AbortSignal.any([stopController.signal, callAbort.signal]);
      Promise.resolve()
        .then(() => handler(call.request, { rpc, signal }))
        .then((resp) => encodeMessage(response, resp ?? {}))
        .then(
          (bytes) => callback(null, bytes),
          (err: unknown) => {
            const failure = failureResponse(rpc, err);
            if (failure) callback(null, encodeMessage(response, failure));
            else callback({ code: grpc.status.UNKNOWN, details: errorDiagnostic(err).summary });
          },
        );
    };
  }
  server.addService(providerService, providerImpl);

  // plugin.GRPCStdio: one server stream, kept open; process.stdout writes go there after the handshake.
  const stdioStreams = new Set<grpc.ServerWritableStream<any, { channel: number; data: Buffer }>>();
  server.addService(
    {
      StreamStdio: {
        path: "/plugin.GRPCStdio/StreamStdio",
        requestStream: false,
        responseStream: true,
        requestSerialize: passThrough,
        requestDeserialize: passThrough,
        responseSerialize: (v: unknown) => encodeMessage("plugin.StdioData", v),
        responseDeserialize: passThrough,
      },
    },
    {
      StreamStdio: (call: grpc.ServerWritableStream<any, { channel: number; data: Buffer }>) => {
        stdioStreams.add(call);
        const forget = () => stdioStreams.delete(call);
        call.on("cancelled", forget);
        call.on("error", forget);
        call.on("close", forget);
      },
    },
  );

  // plugin.GRPCBroker: the client opens the stream at once; we never broker connections.
  const brokerStreams = new Set<grpc.ServerDuplexStream<any, any>>();
  server.addService(
    {
      StartStream: {
        path: "/plugin.GRPCBroker/StartStream",
        requestStream: true,
        responseStream: true,
        requestSerialize: (v: unknown) => encodeMessage("plugin.ConnInfo", v),
        requestDeserialize: (b: Buffer) => decodeMessage("plugin.ConnInfo", b),
        responseSerialize: (v: unknown) => encodeMessage("plugin.ConnInfo", v),
        responseDeserialize: (b: Buffer) => decodeMessage("plugin.ConnInfo", b),
      },
    },
    {
      StartStream: (call: grpc.ServerDuplexStream<any, any>) => {
        brokerStreams.add(call);
        call.on("data", () => undefined);
        const forget = () => brokerStreams.delete(call);
        call.on("end", () => {
          forget();
          call.end();
        });
        call.on("cancelled", forget);
        call.on("error", forget);
      },
    },
  );

  // grpc.health.v1.Health/Check (go-plugin's Ping)
  server.addService(
    {
      Check: {
        path: "/grpc.health.v1.Health/Check",
        requestStream: false,
        responseStream: false,
        requestSerialize: (v: unknown) => encodeMessage("grpc.health.v1.HealthCheckRequest", v),
        requestDeserialize: (b: Buffer) => decodeMessage("grpc.health.v1.HealthCheckRequest", b),
        responseSerialize: (v: unknown) => encodeMessage("grpc.health.v1.HealthCheckResponse", v),
        responseDeserialize: (b: Buffer) => decodeMessage("grpc.health.v1.HealthCheckResponse", b),
      },
    },
    {
      Check: (call: grpc.ServerUnaryCall<{ service: string }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        if (call.request.service === "" || call.request.service === "plugin") callback(null, { status: 1 /* SERVING */ });
        else callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` });
      },
    },
  );

  let stopping: Promise<void> | undefined;
  let socketPath: string | undefined;
  let restoreStdout: (() => void) | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= new Promise<void>((resolve) => {
      stopController.abort(new Error("shutdown"));
      for (const s of stdioStreams) s.end();
      for (const s of brokerStreams) s.end();
      const force = setTimeout(() => server.forceShutdown(), 1000);
      force.unref();
      server.tryShutdown(() => {
        clearTimeout(force);
        if (socketPath) fs.rmSync(socketPath, { force: true });
        restoreStdout?.();
        resolve();
      });
    }));

  // plugin.GRPCController/Shutdown: answer, stop, exit.
  server.addService(
    {
      Shutdown: {
        path: "/plugin.GRPCController/Shutdown",
        requestStream: false,
        responseStream: false,
        requestSerialize: passThrough,
        requestDeserialize: passThrough,
        responseSerialize: (v: unknown) => encodeMessage("plugin.Empty", v),
        responseDeserialize: passThrough,
      },
    },
    {
      Shutdown: (_call: grpc.ServerUnaryCall<Buffer, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        callback(null, {});
        // after the answer is on its way
        setImmediate(() => {
          void Promise.resolve(opts.onShutdown?.())
            .catch(() => undefined)
            .then(stop)
            .then(() => {
              if (opts.exitOnShutdown ?? true) process.exit(0);
            });
        });
      },
    },
  );

  // TLS: AutoMTLS when the client gave its certificate.
  const clientCert = env.PLUGIN_CLIENT_CERT;
  let credentials = grpc.ServerCredentials.createInsecure();
  let certField = "";
  let certMs = 0;
  if (clientCert) {
    const t0 = performance.now();
    const cert = makeServerCertificate();
    certMs = performance.now() - t0;
    credentials = grpc.ServerCredentials.createSsl(Buffer.from(clientCert), [{ private_key: Buffer.from(cert.keyPem), cert_chain: Buffer.from(cert.certPem) }], true);
    certField = cert.der.toString("base64").replace(/=+$/, "");
  }

  const network = opts.network ?? "tcp";
  let address: string;
  if (network === "unix") {
    socketPath = path.join(env.PLUGIN_UNIX_SOCKET_DIR || os.tmpdir(), `plugin${randomBytes(6).toString("hex")}`);
    await bind(server, `unix:${socketPath}`, credentials);
    address = socketPath;
  } else {
    const port = await bind(server, "127.0.0.1:0", credentials);
    address = `127.0.0.1:${port}`;
  }

  let line = `${CORE_PROTOCOL_VERSION}|${APP_PROTOCOL_VERSION}|${network}|${address}|grpc|${certField}`;
  // A client that asks for gRPC broker multiplexing reads a 7th field: we do not multiplex.
  if (env.PLUGIN_MULTIPLEX_GRPC) line += "|false";
  process.stdout.write(`${line}\n`);
  const handshakeMs = performance.now();

  // From now on stdout belongs to the stdio stream (or, while none is open, stderr).
  const originalWrite = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array, encoding?: BufferEncoding | ((err?: Error | null) => void), cb?: (err?: Error | null) => void) => {
    const data = typeof chunk === "string" ? Buffer.from(chunk, typeof encoding === "string" ? encoding : "utf8") : Buffer.from(chunk);
    const done = typeof encoding === "function" ? encoding : cb;
    if (stdioStreams.size > 0) for (const s of stdioStreams) s.write({ channel: 1 /* STDOUT */, data });
    else process.stderr.write(data);
    done?.();
    return true;
  }) as typeof process.stdout.write;
  restoreStdout = () => {
    process.stdout.write = originalWrite;
  };

  // Ctrl-C reaches the whole process group; OpenTofu answers it with StopProvider, and still needs us.
  process.on("SIGINT", () => undefined);

  const startupLog = env.BAREMETAL_TF_STARTUP_LOG;
  if (startupLog) {
    try {
      fs.appendFileSync(startupLog, `${JSON.stringify({ pid: process.pid, handshakeMs: Math.round(handshakeMs * 10) / 10, certMs: Math.round(certMs * 10) / 10, tls: !!clientCert })}\n`);
    } catch {
      /* a measurement aid only */
    }
  }
  opts.onReady?.({ network, address, tls: !!clientCert, handshakeMs, certMs });
  return { stop, address };
}

function bind(server: grpc.Server, address: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => server.bindAsync(address, credentials, (err, port) => (err ? reject(err) : resolve(port))));
}
