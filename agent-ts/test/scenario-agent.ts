/**
 * One agent of the libraries' shared scenario, written with @chorus-bridge/agent; its twin is
 * tests/agents/scenario_agent.py (the Python library). tests/agents/test_scenario.py drives
 * it against the real bridge: one JSON command a line on stdin, one JSON line on stdout per
 * thing done or received.
 *
 * Environment: NATS_URL, AGENT_ID, AGENT_USER, AGENT_PASSWORD, AGENT_ROLES (comma-separated),
 * BRIDGE_SUBJECT_PREFIX. On its own it acks every opportunity and answers every request with
 * `pong:<data>`. Commands: claim, peers, send, request, forge (publish as another agent on a
 * raw connection of its own), snoop (subscribe to another agent's messages on one). SIGTERM
 * and SIGINT: the library leaves (its presence deleted) and the process exits 0.
 */
import { createInterface } from "node:readline";

import { connect, errors } from "@nats-io/transport-node";

import {
  AgentError,
  connectAgent,
  silentLogger,
  type BusAgent,
  type PeerMessage,
} from "@chorus-bridge/agent";

type Line = Record<string, unknown>;

function say(fields: Line): void {
  process.stdout.write(`${JSON.stringify(fields)}\n`);
}

function env(name: string): string {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
}

async function opportunities(agent: BusAgent): Promise<void> {
  for await (const opportunity of agent.opportunities()) {
    await agent.ack(opportunity.id);
    say({ event: "opportunity", id: opportunity.id });
  }
}

async function messages(agent: BusAgent): Promise<void> {
  for await (const message of agent.messages()) {
    const request = message.replyTo !== undefined;
    say({ event: "message", sender: message.sender, data: message.string(), request });
    if (request) answer(message);
  }
}

function answer(message: PeerMessage): void {
  try {
    message.reply(`pong:${message.string()}`);
  } catch (err) {
    say({ event: "reply_refused", error: String(err) });
  }
}

/**
 * A second connection of this agent (same credentials and name) publishes on, or subscribes
 * to, `subject`: the server's refusal, or null when none came within 2 s.
 */
async function rawAttempt(subject: string, subscribe: boolean): Promise<string | null> {
  const nc = await connect({
    servers: env("NATS_URL"),
    name: env("AGENT_ID"),
    user: env("AGENT_USER"),
    pass: env("AGENT_PASSWORD"),
    inboxPrefix: `_INBOX.${env("AGENT_ID")}`,
    maxReconnectAttempts: 0,
  });
  const refused = (async (): Promise<string | null> => {
    for await (const status of nc.status()) {
      if (status.type === "error" && status.error instanceof errors.PermissionViolationError) {
        return status.error.message;
      }
    }
    return null;
  })();
  let received = 0;
  if (subscribe) {
    nc.subscribe(subject, {
      callback: () => {
        received += 1;
      },
    });
  } else {
    nc.publish(subject, "forged");
  }
  await nc.flush();
  const timer = new Promise<null>((resolve) => setTimeout(() => resolve(null), 2000));
  const error = await Promise.race([refused, timer]);
  await nc.close();
  return error ?? (received > 0 ? "received" : null);
}

async function command(agent: BusAgent, line: Line): Promise<void> {
  const done = String(line["do"]);
  const arg = (name: string): string => String(line[name]);
  try {
    switch (done) {
      case "claim":
        say({ did: done, answer: withReason(await agent.claim(arg("opportunity"), arg("role"))) });
        break;
      case "peers":
        say({ did: done, peers: await agent.peers() });
        break;
      case "send":
        await agent.send(arg("to"), arg("data"));
        say({ did: done });
        break;
      case "request":
        say({ did: done, reply: (await agent.request(arg("to"), arg("data"))).string() });
        break;
      case "forge":
        say({
          did: done,
          error: await rawAttempt(agent.names.message(arg("to"), arg("as")), false),
        });
        break;
      case "snoop":
        say({ did: done, error: await rawAttempt(agent.names.message(arg("of"), "*"), true) });
        break;
      default:
        say({ did: done, error: `unknown command ${done}` });
    }
  } catch (err) {
    if (!(err instanceof AgentError)) throw err;
    say({ did: done, error: err.message, kind: err.name });
  }
}

/** The answer as the Python twin prints it: `reason` null when granted. */
function withReason(answer: Awaited<ReturnType<BusAgent["claim"]>>): Line {
  return answer.granted ? { ...answer, reason: null } : { ...answer };
}

async function commands(agent: BusAgent): Promise<void> {
  for await (const text of createInterface({ input: process.stdin })) {
    await command(agent, JSON.parse(text) as Line);
  }
}

const agent = await connectAgent({
  servers: env("NATS_URL"),
  agentId: env("AGENT_ID"),
  user: env("AGENT_USER"),
  password: env("AGENT_PASSWORD"),
  prefix: process.env["BRIDGE_SUBJECT_PREFIX"] ?? "chorus",
  roles: (process.env["AGENT_ROLES"] ?? "").split(",").filter((role) => role !== ""),
  logger: silentLogger,
});
agent.leaveOnSignals();
say({ event: "joined", id: agent.id });
await Promise.all([opportunities(agent), messages(agent), commands(agent)]);
