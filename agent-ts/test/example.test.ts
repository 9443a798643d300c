// The example agent as a process of its own: it joins, answers a peer, acks, and leaves the
// bus cleanly on SIGTERM (what `docker stop` sends) and SIGINT (Ctrl-C), with no stack trace.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";

import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";

import { connectAgent, silentLogger } from "@chorus-bridge/agent";

import {
  bridgeConnection,
  eventually,
  first,
  liveEntry,
  NatsServer,
  PACKAGE_DIR,
  PASSWORDS,
  presenceBucket,
  stopProcess,
} from "./harness.js";

const EXAMPLE = join(PACKAGE_DIR, "examples", "agent.mjs");

interface Running {
  proc: ChildProcess;
  /** stdout's JSON lines, as they come. */
  lines: AsyncIterable<Record<string, unknown>>;
  /** Everything written on stderr so far. */
  stderr: () => string;
}

function runExample(env: Record<string, string>): Running {
  const proc = spawn(process.execPath, [EXAMPLE], {
    cwd: PACKAGE_DIR,
    env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const stdout = proc.stdout;
  assert.ok(stdout);
  const lines = (async function* () {
    for await (const line of createInterface({ input: stdout })) {
      yield JSON.parse(line) as Record<string, unknown>;
    }
  })();
  return { proc, lines, stderr: () => stderr };
}

/** Wait (10 s at most) for `proc` to end: its exit code and signal. */
async function exited(proc: ChildProcess): Promise<[number | null, string | null]> {
  if (proc.exitCode !== null || proc.signalCode !== null) return [proc.exitCode, proc.signalCode];
  const result = once(proc, "exit") as Promise<[number | null, string | null]>;
  const limit = setTimeout(() => proc.kill("SIGKILL"), 10000);
  try {
    return await result;
  } finally {
    clearTimeout(limit);
  }
}

/** stderr holds only the library's JSON log lines: no stack trace, no other text. */
function assertNoStackTrace(stderr: string): string[] {
  const lines = stderr.split("\n").filter((line) => line !== "");
  for (const line of lines) {
    assert.doesNotMatch(line, /^\s+at /, `a stack frame on stderr:\n${stderr}`);
    assert.doesNotThrow(() => JSON.parse(line), `not a log line: ${line}\n${stderr}`);
  }
  return lines.map((line) => String((JSON.parse(line) as { event: unknown }).event));
}

describe("the example agent", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let kv: KV;
  const running: ChildProcess[] = [];

  before(async () => {
    server = await NatsServer.start();
    nc = await bridgeConnection(server);
    kv = await presenceBucket(nc);
  });
  after(async () => {
    await Promise.all(running.map(stopProcess));
    await nc?.close();
    await server?.stop();
  });

  const start = (agentId: string, extra: Record<string, string> = {}): Running => {
    const example = runExample({
      NATS_URL: server.url,
      AGENT_ID: agentId,
      AGENT_USER: "agent",
      AGENT_PASSWORD: PASSWORDS.agent,
      ...extra,
    });
    running.push(example.proc);
    return example;
  };

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal}: the example leaves the bus (presence deleted), exits 0, no stack trace`, async () => {
      const agentId = `example-${signal.toLowerCase()}`;
      const example = start(agentId);
      await first("the ready line", example.lines, (line) => line["event"] === "ready");
      assert.ok(await liveEntry(kv, agentId), "on the bus while it runs");

      example.proc.kill(signal);
      assert.deepEqual(await exited(example.proc), [0, null]);
      assert.equal(await liveEntry(kv, agentId), null, "the presence entry is gone at once");
      assert.equal((await kv.get(agentId))?.operation, "DEL");
      const events = assertNoStackTrace(example.stderr());
      assert.deepEqual(events, ["agent_joined_bus", "agent_leaving_on_signal", "agent_left_bus"]);
    });
  }

  test("SIGTERM while NATS is down: the example still exits 0 at once, no stack trace", async () => {
    const own = await NatsServer.start();
    try {
      const example = runExample({
        NATS_URL: own.url,
        AGENT_ID: "example-stranded",
        AGENT_USER: "agent",
        AGENT_PASSWORD: PASSWORDS.agent,
      });
      running.push(example.proc);
      const ownNc = await bridgeConnection(own);
      await presenceBucket(ownNc);
      await ownNc.close();
      await first("the ready line", example.lines, (line) => line["event"] === "ready");
      await own.stop(false);
      await eventually("the example saw NATS go", () =>
        example.stderr().includes("agent_disconnected") ? true : undefined,
      );
      example.proc.kill("SIGTERM");
      assert.deepEqual(await exited(example.proc), [0, null]);
      assert.deepEqual(assertNoStackTrace(example.stderr()), [
        "agent_joined_bus",
        "agent_disconnected",
        "agent_leaving_on_signal",
        "agent_presence_not_deleted",
        "agent_left_bus",
      ]);
    } finally {
      await own.stop();
    }
  });

  test("the example acks opportunities, claims its role and answers a peer's request", async () => {
    const example = start("example-worker", { AGENT_ROLES: "qa-engineer,tpm" });
    await first("the ready line", example.lines, (line) => line["event"] === "ready");
    const claims = nc.subscribe("chorus.council.*.claims.*", {
      callback: (_err, msg) => {
        const { role } = msg.json<{ role: string }>();
        msg.respond(JSON.stringify({ granted: true, role, holder: "example-worker" }));
      },
    });
    await nc.flush();
    nc.publish(
      "chorus.council.opportunities",
      JSON.stringify({ id: "council-7", roles: [{ name: "tpm", core: true }] }),
    );
    const claimed = await first(
      "the claim's answer",
      example.lines,
      (l) => l["event"] === "claimed",
    );
    assert.deepEqual(claimed, {
      event: "claimed",
      opportunity_id: "council-7",
      granted: true,
      role: "tpm",
      holder: "example-worker",
    });
    claims.unsubscribe();

    const peer = await connectAgent({
      servers: server.url,
      agentId: "peer",
      user: "agent",
      password: PASSWORDS.agent,
      logger: silentLogger,
    });
    try {
      const reply = await peer.request("example-worker", "hello");
      assert.equal(reply.string(), "example-worker got: hello");
    } finally {
      await peer.close();
    }
    example.proc.kill("SIGTERM");
    assert.deepEqual(await exited(example.proc), [0, null]);
  });

  test("a bad agent id: one line on stderr, exit status 1, never on the bus", async () => {
    const example = start("bad.id");
    assert.deepEqual(await exited(example.proc), [1, null]);
    assert.equal(
      example.stderr(),
      `agent: agent id "bad.id": use 1 to 256 letters, digits, '-' or '_' (a Swarm task ID is fine)\n`,
    );
  });

  test("a wrong password: said at once, then one line at the end; no password; exit status 1", async () => {
    const example = start("example-wrong", {
      AGENT_PASSWORD: "wrong-secret",
      AGENT_CONNECT_WINDOW_MS: "1500",
    });
    assert.deepEqual(await exited(example.proc), [1, null]);
    const stderr = example.stderr();
    const [first, last, ...rest] = stderr.split("\n").filter((line) => line !== "");
    assert.deepEqual(rest, [], stderr);
    // While the window lasts: the refusal, once (the attempts repeat it every 0.5 s).
    const said = JSON.parse(first ?? "{}") as Record<string, unknown>;
    assert.equal(said["event"], "agent_nats_error", stderr);
    assert.match(String(said["error"]), /[Aa]uthorization/);
    assert.match(
      last ?? "",
      /^agent: cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+: .*[Aa]uthorization/,
    );
    assert.doesNotMatch(stderr, /wrong-secret/);
  });
});
