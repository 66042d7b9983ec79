// The benchmark's scripted OpenAI-compatible upstream on node:http (no dependencies).
//
// Same script as `chat_overhead.py --serve-upstream` (the Python/uvicorn one): a role
// chunk, N content chunks " tok<i>" each due (i+1) x D ms after the request, a finish
// chunk, a usage chunk when asked for, [DONE]. The last user message may say
// `chunks=N delay_ms=D`. It stands in for a model server on another machine, so what it
// costs here is the benchmark's, not byok's: Node serves the same stream for a fraction
// of uvicorn's CPU, which leaves more of the two vCPUs to the processes being measured.
//
// Usage: node bench/upstream.mjs PORT CHUNKS DELAY_MS
import http from "node:http";

const [port, defaultChunks, defaultDelay] = process.argv.slice(2).map(Number);
const SPEC = /chunks=(\d+)\s+delay_ms=([0-9.]+)/;

function event(head, choices, usage) {
  const chunk = { ...head, choices };
  if (usage !== undefined) chunk.usage = usage;
  return `data: ${JSON.stringify(chunk)}\n\n`;
}

function choice(delta, finish = null) {
  return [{ index: 0, delta, logprobs: null, finish_reason: finish }];
}

function stream(request, res) {
  let n = defaultChunks;
  let delay = defaultDelay;
  const messages = Array.isArray(request.messages) ? request.messages : [];
  const last = [...messages].reverse().find((m) => m && m.role === "user");
  const spec = last ? SPEC.exec(String(last.content ?? "")) : null;
  if (spec) {
    n = Number(spec[1]);
    delay = Number(spec[2]);
  }
  const wantsUsage = Boolean(request.stream_options && request.stream_options.include_usage);
  const use = (value) => (wantsUsage ? value : undefined);
  const head = {
    id: "chatcmpl-bench",
    object: "chat.completion.chunk",
    created: Math.floor(Date.now() / 1000),
    model: String(request.model ?? ""),
    system_fingerprint: null,
  };
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
  });
  res.write(event(head, choice({ role: "assistant", content: "" }), use(null)));
  const t0 = performance.now();
  let i = 0;
  let closed = false;
  res.on("close", () => {
    closed = true;
  });
  const due = () => t0 + (i + 1) * delay;
  const next = () => {
    if (closed) return;
    if (i < n && delay > 0 && performance.now() < due()) {
      schedule(); // a timer that fired early (libuv's clock is cached per loop turn)
      return;
    }
    if (i < n) {
      res.write(event(head, choice({ content: ` tok${i}` }), use(null)));
      i += 1;
      schedule();
      return;
    }
    res.write(event(head, choice({}, "stop"), use(null)));
    if (wantsUsage) {
      res.write(event(head, [], { prompt_tokens: 12, completion_tokens: n, total_tokens: 12 + n }));
    }
    res.end("data: [DONE]\n\n");
  };
  // Chunk i is sent when it is due, never early: a late chunk does not push the later
  // ones back (as a model server emits tokens at its own pace).
  const schedule = () => {
    const wait = due() - performance.now();
    if (delay > 0 && wait > 0) setTimeout(next, Math.ceil(wait));
    else setImmediate(next);
  };
  schedule();
}

const server = http.createServer({ noDelay: true, keepAliveTimeout: 60_000 }, (req, res) => {
  if (req.method === "GET") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
    return;
  }
  const parts = [];
  req.on("data", (part) => parts.push(part));
  req.on("end", () => {
    let request;
    try {
      request = JSON.parse(Buffer.concat(parts).toString("utf8"));
    } catch {
      res.writeHead(400, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: "body is not JSON" } }));
      return;
    }
    stream(request, res);
  });
});
server.listen(port, "127.0.0.1", 2048);
process.on("SIGTERM", () => process.exit(0));
