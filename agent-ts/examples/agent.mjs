#!/usr/bin/env node
// A runnable agent on the chorus-bridge bus: it joins, acks every council opportunity, claims
// the first of its roles the council offers, answers peers' requests, and leaves cleanly on
// SIGTERM (`docker stop`) or Ctrl-C.
//
//   npm ci && npm run build
//   NATS_URL=nats://127.0.0.1:4222 AGENT_ID=agent-1 AGENT_USER=agent AGENT_PASSWORD=... \
//     AGENT_ROLES=tpm node examples/agent.mjs
//
// Environment: NATS_URL (default nats://127.0.0.1:4222, comma-separated for a cluster),
// AGENT_ID (required; a Swarm task's is {{.Task.ID}}), AGENT_USER and AGENT_PASSWORD, or
// AGENT_TOKEN; NATS_TLS_CA (the CA of the server's certificate); AGENT_ROLES (comma-separated
// roles this agent claims); BRIDGE_SUBJECT_PREFIX (default chorus); AGENT_CONNECT_WINDOW_MS (how
// long the first connection is tried, default 60000: with the auth callout an agent is refused
// until the bridge's discovery lists its task).
// stdout: one JSON line per thing the agent did; stderr: the library's state changes.
import { AgentError, connectAgent } from "@chorus-bridge/agent";

const env = process.env;
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const roles = (env.AGENT_ROLES ?? "").split(",").filter((role) => role !== "");

async function main() {
  if (!env.AGENT_ID) throw new AgentError("AGENT_ID is not set: give this agent its id");
  const agent = await connectAgent({
    servers: env.NATS_URL || "nats://127.0.0.1:4222",
    agentId: env.AGENT_ID,
    user: env.AGENT_USER || undefined,
    password: env.AGENT_PASSWORD || undefined,
    token: env.AGENT_TOKEN || undefined,
    tls: env.NATS_TLS_CA ? { caFile: env.NATS_TLS_CA } : undefined,
    prefix: env.BRIDGE_SUBJECT_PREFIX || undefined,
    taskId: env.AGENT_ID,
    roles,
    firstConnectionWindowMs: env.AGENT_CONNECT_WINDOW_MS
      ? Number(env.AGENT_CONNECT_WINDOW_MS)
      : undefined,
  });
  agent.leaveOnSignals(); // SIGTERM, SIGINT: delete presence, drain, exit 0
  say({ event: "ready", agent_id: agent.id });
  // Both loops end when the agent leaves.
  await Promise.all([takeOpportunities(agent), answerPeers(agent)]);
}

async function takeOpportunities(agent) {
  for await (const opportunity of agent.opportunities()) {
    await agent.ack(opportunity.id);
    say({ event: "acked", opportunity_id: opportunity.id });
    const role = roles.find((name) => opportunity.roles.some((offered) => offered.name === name));
    if (role === undefined) continue;
    try {
      const answer = await agent.claim(opportunity.id, role);
      say({ event: "claimed", opportunity_id: opportunity.id, ...answer });
    } catch (err) {
      if (!(err instanceof AgentError)) throw err;
      say({ event: "claim_failed", opportunity_id: opportunity.id, role, error: err.message });
    }
  }
}

async function answerPeers(agent) {
  for await (const message of agent.messages()) {
    say({ event: "message", from: message.sender, text: message.string() });
    if (message.replyTo !== undefined) {
      try {
        message.reply(`${agent.id} got: ${message.string()}`);
      } catch (err) {
        if (!(err instanceof AgentError)) throw err;
        say({ event: "reply_refused", from: message.sender, error: err.message });
      }
    }
  }
}

main().catch((err) => {
  // One line, never a stack trace: the library's errors say what happened and what to do.
  process.stderr.write(`agent: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
