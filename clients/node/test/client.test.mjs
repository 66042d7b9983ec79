// End-to-end: the compiled client (dist/) against the LIVE Python server over gRPC.
// Starts `.venv/bin/byok-server serve` on free loopback ports with a fresh data dir;
// chat goes to the embedded local model (no MODEL_ROUTE_* → route LOCAL).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { ByokError, Code, createByokClient } from "../dist/index.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const serverBin = process.env.BYOK_SERVER_BIN ?? join(repo, ".venv/bin/byok-server");

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe("byok TypeScript client against the live server", { timeout: 90_000 }, () => {
  let server;
  let exited;
  let log = "";
  let dataDir;
  let client;
  const seenAuth = [];
  const listCalls = [];

  before(async () => {
    assert.ok(existsSync(serverBin), `${serverBin} not found: run 'make venv' at the repo root`);
    const [grpcPort, httpPort] = [await freePort(), await freePort()];
    dataDir = mkdtempSync(join(tmpdir(), "byok-node-test-"));
    const env = Object.fromEntries(
      Object.entries(process.env).filter(
        ([k]) => !k.startsWith("MODEL_ROUTE_") && !k.startsWith("PROVIDER_") && !k.startsWith("BYOK_"),
      ),
    );
    Object.assign(env, {
      BYOK_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
      BYOK_HTTP_ADDR: `127.0.0.1:${httpPort}`,
      BYOK_DATA_DIR: dataDir,
      BYOK_SHUTDOWN_GRACE_SECONDS: "1",
      BYOK_LOG_LEVEL: "WARNING",
    });
    // cwd = the data dir, so no developer's .env (routes, keys) leaks into the test.
    server = spawn(serverBin, ["serve"], { cwd: dataDir, env, stdio: ["ignore", "pipe", "pipe"] });
    server.stdout.on("data", (d) => (log += d));
    server.stderr.on("data", (d) => (log += d));
    exited = new Promise((res) => server.on("exit", (code, signal) => res({ code, signal })));
    // Never leave a server behind, even if the runner dies before after() runs.
    const child = server;
    process.once("exit", () => child.kill("SIGKILL"));
    let gone = false;
    exited.then(() => (gone = true));

    const deadline = Date.now() + 45_000;
    for (;;) {
      if (gone) assert.fail(`byok-server exited before it was ready:\n${log}`);
      if (Date.now() > deadline) assert.fail(`byok-server not ready within 45 s:\n${log}`);
      try {
        const r = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
        if (r.status === 200) break;
      } catch {
        // not listening yet
      }
      await sleep(200);
    }

    client = createByokClient({
      address: `127.0.0.1:${grpcPort}`,
      apiKey: "test-key",
      timeoutMs: 30_000,
      interceptors: [
        (next) => async (req) => {
          seenAuth.push(req.header.get("authorization"));
          if (req.method.name === "ListConversations") listCalls.push(req.message.pageToken);
          return next(req);
        },
      ],
    });
  });

  after(async () => {
    client?.close();
    if (server && server.exitCode === null && server.signalCode === null) {
      server.kill("SIGTERM");
      const killer = setTimeout(() => server.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(killer);
    }
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("createConversation then getConversation returns it", async () => {
    const created = await client.createConversation({
      conversation: { title: "node client", metadata: { from: "node-test" } },
    });
    assert.match(created.name, /^conversations\/[^/]+$/);
    assert.equal(created.title, "node client");

    const got = await client.getConversation(created.name);
    assert.equal(got.name, created.name);
    assert.equal(got.title, "node client");
    assert.deepEqual(got.metadata, { from: "node-test" });
    assert.ok(got.createTime, "createTime is set");
    assert.equal(seenAuth.at(-1), "Bearer test-key");
  });

  test("streamChat yields started, deltas, usage, done", async () => {
    const events = [];
    for await (const ev of client.streamChat({ content: "Say hello.", params: { maxTokens: 8 } })) {
      events.push(ev);
    }
    const cases = events.map((e) => e.event.case);
    assert.equal(cases[0], "started", `events: ${cases}`);
    assert.equal(cases.at(-1), "done", `events: ${cases}`);
    assert.equal(cases.at(-2), "usage", `events: ${cases}`);
    assert.ok(cases.slice(1, -2).length >= 1, `at least one delta: ${cases}`);
    assert.ok(cases.slice(1, -2).every((c) => c === "delta"), `only deltas between: ${cases}`);
    assert.deepEqual(
      events.map((e) => e.sequence),
      events.map((_, i) => BigInt(i + 1)),
    );

    const started = events[0].event.value;
    assert.match(started.conversation, /^conversations\/[^/]+$/);
    assert.equal(started.conversationCreated, true);
    assert.ok(started.model, "started names the model");

    const text = events
      .filter((e) => e.event.case === "delta")
      .map((e) => e.event.value.text)
      .join("");
    assert.ok(text.trim().length > 0, "non-empty reply");

    const usage = events.at(-2).event.value;
    assert.ok(usage.completionTokens > 0n);
    const done = events.at(-1).event.value;
    assert.ok(done.message.startsWith(`${started.conversation}/messages/`));

    // The turn was stored: the conversation now holds the user message and the reply.
    const conv = await client.getConversation(started.conversation);
    assert.equal(conv.messages.length, 2);
    assert.equal(conv.messages[1].content, text);
  });

  test("chat returns the whole reply", async () => {
    const conv = await client.createConversation({ conversation: { title: "unary chat" } });
    const res = await client.chat({ conversation: conv.name, content: "Hi!", params: { maxTokens: 8 } });
    assert.equal(res.conversation, conv.name);
    assert.equal(res.userMessage?.content, "Hi!");
    assert.ok(res.reply && res.reply.content.trim().length > 0, "non-empty reply");
  });

  test("listConversations pages through every conversation exactly once", async () => {
    const created = [];
    for (let i = 0; i < 7; i++) {
      const c = await client.createConversation({ conversation: { title: `page ${i}` } });
      created.push(c.name);
    }
    const all = (await client.listConversationsPage({ pageSize: 1000 })).conversations.map((c) => c.name);
    assert.equal(new Set(all).size, all.length);

    listCalls.length = 0;
    const yielded = [];
    for await (const c of client.listConversations({ pageSize: 3 })) yielded.push(c.name);

    assert.equal(new Set(yielded).size, yielded.length, "no conversation twice");
    assert.deepEqual([...yielded].sort(), [...all].sort(), "every conversation");
    for (const name of created) assert.ok(yielded.includes(name), `${name} listed`);
    assert.equal(listCalls.length, Math.ceil(all.length / 3), `pages fetched: ${listCalls.length}`);
    assert.equal(listCalls[0], "", "first page without a token");
    assert.ok(listCalls.slice(1).every((t) => t !== ""), "later pages with a token");
  });

  test("NOT_FOUND carries ErrorInfo from grpc-status-details-bin", async () => {
    await assert.rejects(client.getConversation("conversations/nope"), (err) => {
      assert.ok(err instanceof ByokError, `a ByokError, got ${err}`);
      assert.equal(err.code, Code.NOT_FOUND);
      assert.equal(err.code, 5);
      assert.equal(err.codeName, "NOT_FOUND");
      assert.equal(err.reason, "RESOURCE_NOT_FOUND");
      assert.equal(err.domain, "byok.dev");
      assert.equal(err.metadata.name, "conversations/nope");
      assert.equal(err.status?.code, 5);
      assert.ok(err.errorInfo, "ErrorInfo decoded");
      return true;
    });
  });
});
