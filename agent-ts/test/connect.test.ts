// Connecting: user and password (the other tests), a token, TLS verified against a CA of the
// test's own, a server that is not there, and a NATS restart under a connected agent.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";

import { ConnectError, connectAgent, silentLogger, type Logger } from "@chorus-bridge/agent";

import {
  bridgeConnection,
  eventually,
  liveEntry,
  NatsServer,
  PASSWORDS,
  presenceBucket,
} from "./harness.js";

const run = promisify(execFile);

/** A CA, and a certificate it signed for 127.0.0.1; and a second CA that signed nothing. */
async function makeCertificates(dir: string): Promise<Record<string, string>> {
  const files = {
    ca: join(dir, "ca.pem"),
    caKey: join(dir, "ca.key"),
    otherCa: join(dir, "other-ca.pem"),
    otherCaKey: join(dir, "other-ca.key"),
    cert: join(dir, "server.pem"),
    key: join(dir, "server.key"),
    csr: join(dir, "server.csr"),
    ext: join(dir, "san.ext"),
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await run("openssl", [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    files.caKey,
    "-out",
    files.ca,
    "-days",
    "1",
    "-subj",
    "/CN=agent-ts test CA",
  ]);
  await run("openssl", [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    files.otherCaKey,
    "-out",
    files.otherCa,
    "-days",
    "1",
    "-subj",
    "/CN=another CA",
  ]);
  await run("openssl", [
    "req",
    ...ec,
    "-keyout",
    files.key,
    "-out",
    files.csr,
    "-subj",
    "/CN=127.0.0.1",
  ]);
  await writeFile(files.ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await run("openssl", [
    "x509",
    "-req",
    "-in",
    files.csr,
    "-CA",
    files.ca,
    "-CAkey",
    files.caKey,
    "-CAcreateserial",
    "-out",
    files.cert,
    "-days",
    "1",
    "-extfile",
    files.ext,
  ]);
  return files;
}

describe("connect", () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "chorus-agent-ts-certs-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("a token", async () => {
    const server = await NatsServer.start({ auth: { kind: "token", token: "t0ken-secret" } });
    try {
      const nc = await connect({ servers: server.url, token: "t0ken-secret" });
      const kv = await presenceBucket(nc);
      const agent = await connectAgent({
        servers: server.url,
        agentId: "token-agent",
        token: "t0ken-secret",
        logger: silentLogger,
      });
      assert.ok(await liveEntry(kv, "token-agent"));
      await agent.close();
      await nc.close();
      await assert.rejects(
        connectAgent({
          servers: server.url,
          agentId: "x",
          token: "wrong",
          logger: silentLogger,
          firstConnectionWindowMs: 1000,
        }),
        (err: unknown) => {
          assert.ok(err instanceof ConnectError, String(err));
          assert.doesNotMatch(err.message, /wrong/);
          return true;
        },
      );
    } finally {
      await server.stop();
    }
  });

  test("TLS: verified against the CA given; another CA is refused", async () => {
    const files = await makeCertificates(dir);
    const server = await NatsServer.start({
      tls: { certFile: String(files["cert"]), keyFile: String(files["key"]) },
    });
    try {
      const nc = await connect({
        servers: server.url,
        user: "bridge",
        pass: PASSWORDS.bridge,
        tls: { caFile: String(files["ca"]) },
      });
      const kv = await presenceBucket(nc);
      const options = {
        servers: server.url,
        agentId: "tls-agent",
        user: "agent",
        password: PASSWORDS.agent,
        logger: silentLogger,
      };
      const agent = await connectAgent({ ...options, tls: { caFile: String(files["ca"]) } });
      assert.ok(await liveEntry(kv, "tls-agent"));
      await agent.close();
      await nc.close();
      for (const tls of [{ caFile: String(files["otherCa"]) }, undefined]) {
        await assert.rejects(connectAgent({ ...options, tls }), (err: unknown) => {
          assert.ok(err instanceof ConnectError, String(err));
          assert.match(
            err.message,
            /cannot connect to NATS at tls:\/\/127\.0\.0\.1:\d+: .*certificate/,
          );
          return true;
        });
      }
    } finally {
      await server.stop();
    }
  });

  test("nobody listening: ConnectError naming the server without its user info", async () => {
    const server = await NatsServer.start();
    const url = `nats://agent:${PASSWORDS.agent}@127.0.0.1:${server.port}`;
    await server.stop(); // the port is free now
    const lines: [string, Record<string, unknown>][] = [];
    await assert.rejects(
      connectAgent({
        servers: url,
        agentId: "lonely",
        logger: (_level, event, fields) => lines.push([event, fields]),
        connectTimeoutMs: 1000,
        firstConnectionWindowMs: 2000,
      }),
      (err: unknown) => {
        assert.ok(err instanceof ConnectError, String(err));
        assert.match(
          err.message,
          new RegExp(`^cannot connect to NATS at nats://127\\.0\\.0\\.1:${server.port}: `),
        );
        assert.doesNotMatch(err.message, new RegExp(PASSWORDS.agent));
        return true;
      },
    );
    // While the window lasted (attempts 0.5 s apart, all refused alike): said once, not per
    // attempt, and without the password.
    const said = lines.filter(([event]) => event === "agent_nats_error");
    assert.equal(said.length, 1, JSON.stringify(lines));
    assert.equal(said[0]?.[1]["agent_id"], "lonely");
    assert.doesNotMatch(JSON.stringify(said), new RegExp(PASSWORDS.agent));
  });

  test("a server that comes up within the first-connection window: the agent joins", async () => {
    const first = await NatsServer.start();
    const port = first.port;
    await first.stop(); // nobody listens for a while, as when an agent starts before its NATS
    const events: string[] = [];
    const joining = connectAgent({
      servers: `nats://127.0.0.1:${port}`,
      agentId: "early",
      user: "agent",
      password: PASSWORDS.agent,
      logger: (_level, event) => events.push(event),
      firstConnectionWindowMs: 20_000,
    });
    let settled = false;
    void joining.then(
      () => (settled = true),
      () => (settled = true),
    );
    // The first attempt failed (and was said), and the agent goes on trying.
    await eventually("a failed attempt said", () =>
      events.includes("agent_nats_error") ? true : undefined,
    );
    assert.equal(settled, false, "gave up at the first failure");
    const server = await NatsServer.start({ port });
    try {
      const agent = await joining;
      await agent.close();
    } finally {
      await server.stop();
    }
  });

  test("a NATS restart (kill -9): the agent reconnects and its presence is back within the interval", async () => {
    const first = await NatsServer.start();
    let server = first;
    const events: string[] = [];
    const logger: Logger = (_level, event) => events.push(event);
    let nc = await bridgeConnection(server);
    let kv = await presenceBucket(nc, "file");
    const agent = await connectAgent({
      servers: server.url,
      agentId: "survivor",
      user: "agent",
      password: PASSWORDS.agent,
      logger,
    });
    try {
      const before = (await liveEntry(kv, "survivor"))?.revision ?? 0;
      assert.ok(before > 0);
      await nc.close();
      server = await first.restart();
      nc = await bridgeConnection(server);
      kv = await new Kvm(nc).open("chorus_presence"); // kept by the file store
      await eventually("the agent reconnected", () =>
        events.includes("agent_reconnected") ? true : undefined,
      );
      // Written at once on reconnect, not at the next tick of the 5 s interval.
      const after = await eventually(
        "a presence write after the restart",
        async () => {
          const revision = (await liveEntry(kv, "survivor"))?.revision ?? 0;
          return revision > before ? revision : undefined;
        },
        5000,
      );
      assert.ok(after > before);
      assert.deepEqual(events.slice(0, 3), [
        "agent_joined_bus",
        "agent_disconnected",
        "agent_reconnected",
      ]);
    } finally {
      await agent.close();
      await nc.close();
      await server.stop();
      await first.stop();
    }
    assert.equal(events.at(-1), "agent_left_bus");
  });
});
