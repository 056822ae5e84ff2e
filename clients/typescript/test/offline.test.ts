/** Tests of the hand-written layer that need no server: SSE parsing, error mapping, retries, stream errors. */

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { inspect } from "node:util";

import {
  errorFromBody,
  LlmBusyError,
  NotFoundError,
  parseRetryAfter,
  readServerSentEvents,
  retryingFetch,
  SealmemClient,
  SealmemError,
  SubjectForgottenError,
  UnavailableError,
  type RetryInfo,
} from "../src/index.js";

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

const ERROR = (code: string) => ({ error: { code, message: `${code} happened`, request_id: "r1" } });

describe("Server-Sent Events", () => {
  test("events split across chunks, CRLF, comments, multi-line data", async () => {
    const events = [];
    for await (const event of readServerSentEvents(
      streamOf(['event: delta\ndata: {"te', 'xt":"Hi"}\n', "\n: keep-alive\n\r", "\nevent: done\r\ndata: a\r\ndata: b\r\n\r\n", "data: x"]),
    )) {
      events.push(event);
    }
    assert.deepEqual(
      events.map((e) => [e.event, e.data]),
      [
        ["delta", '{"text":"Hi"}'],
        ["done", "a\nb"],
      ],
    );
  });

  test("multi-byte characters split between chunks", async () => {
    const bytes = new TextEncoder().encode('event: delta\ndata: {"text":"Olá ☕"}\n\n');
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const byte of bytes) controller.enqueue(new Uint8Array([byte]));
        controller.close();
      },
    });
    const events = [];
    for await (const event of readServerSentEvents(body)) events.push(event);
    const [event] = events;
    assert.equal(JSON.parse(event!.data).text, "Olá ☕");
  });
});

describe("errors", () => {
  test("a class per code, and the code's status for errors inside a stream", () => {
    const forgotten = errorFromBody(ERROR("subject_forgotten"));
    assert.ok(forgotten instanceof SubjectForgottenError);
    assert.equal(forgotten.status, 409);
    assert.equal(forgotten.requestId, "r1");
    assert.equal(forgotten.message, "subject_forgotten happened");
    const busy = errorFromBody(ERROR("llm_busy"), { status: 429, headers: new Headers({ "Retry-After": "2" }) });
    assert.ok(busy instanceof LlmBusyError);
    assert.equal(busy.retryAfter, 2);
  });

  test("an unknown code keeps its code, with a class from the status", () => {
    const error = errorFromBody(ERROR("brand_new_code"), { status: 404 });
    assert.ok(error instanceof NotFoundError);
    assert.equal(error.code, "brand_new_code");
    const plain = errorFromBody("<html>bad gateway</html>", { status: 418 });
    assert.equal(plain.constructor, SealmemError);
    assert.equal(plain.code, "http_418");
  });

  test("Retry-After as seconds or an HTTP date", () => {
    assert.equal(parseRetryAfter("3"), 3);
    assert.equal(parseRetryAfter(null), null);
    assert.equal(parseRetryAfter("soon"), null);
    const now = Date.parse("2025-01-01T00:00:00Z");
    assert.equal(parseRetryAfter("Wed, 01 Jan 2025 00:00:05 GMT", now), 5);
  });
});

describe("client", () => {
  test("logging a client never prints its credential", () => {
    const client = new SealmemClient({ baseUrl: "http://sealmem.invalid", apiKey: "smk_TOPSECRET" });
    assert.doesNotMatch(inspect(client, { depth: 10, showHidden: true }), /TOPSECRET/);
    assert.doesNotMatch(inspect(client.withCredential("tok_TOPSECRET2"), { depth: 10 }), /TOPSECRET/);
  });
});

describe("retries", () => {
  test("503 then 200: retried after Retry-After, the body sent again", async () => {
    const bodies: string[] = [];
    const answers = [json(503, ERROR("unavailable"), { "Retry-After": "0" }), json(200, { ok: true })];
    const retries: RetryInfo[] = [];
    const fetch = retryingFetch(
      async (request) => {
        bodies.push(await request.text());
        return answers.shift()!;
      },
      { onRetry: (info) => retries.push(info) },
    );
    const response = await fetch(new Request("http://x/v1/memories", { method: "POST", body: '{"a":1}' }));
    assert.equal(response.status, 200);
    assert.deepEqual(bodies, ['{"a":1}', '{"a":1}']);
    assert.deepEqual(
      retries.map((r) => [r.status, r.retryAfter, r.delayMs]),
      [[503, 0, 0]],
    );
  });

  test("without Retry-After: exponential backoff, then the last answer", async () => {
    const retries: RetryInfo[] = [];
    const fetch = retryingFetch(async () => json(429, ERROR("rate_limited")), {
      maxRetries: 3,
      baseDelayMs: 4,
      maxDelayMs: 10,
      onRetry: (info) => retries.push(info),
    });
    const response = await fetch(new Request("http://x/"));
    assert.equal(response.status, 429);
    assert.equal(retries.length, 3);
    const [a, b, c] = retries.map((r) => r.delayMs);
    assert.ok(a! >= 2 && a! <= 4 && b! >= 4 && b! <= 8 && c! >= 5 && c! <= 10, `${a} ${b} ${c}`);
  });

  test("a failed connection is retried for GET, not for POST", async () => {
    let calls = 0;
    const fetch = retryingFetch(
      async () => {
        calls++;
        throw new TypeError("fetch failed");
      },
      { baseDelayMs: 1 },
    );
    await assert.rejects(fetch(new Request("http://x/")), TypeError);
    assert.equal(calls, 3);
    calls = 0;
    await assert.rejects(fetch(new Request("http://x/", { method: "POST", body: "{}" })), TypeError);
    assert.equal(calls, 1);
  });

  test("through the client: the typed error after the last retry", async () => {
    let calls = 0;
    const client = new SealmemClient({
      baseUrl: "http://sealmem.invalid",
      apiKey: "smk_test",
      retry: { maxRetries: 1, baseDelayMs: 1 },
      fetch: async (request) => {
        calls++;
        assert.equal(request.headers.get("authorization"), "Bearer smk_test");
        return json(503, ERROR("not_ready"));
      },
    });
    await assert.rejects(client.admin.stats(), UnavailableError);
    assert.equal(calls, 2);
  });
});

describe("chat stream events", () => {
  function sseClient(body: string): SealmemClient {
    return new SealmemClient({
      baseUrl: "http://sealmem.invalid",
      apiKey: "smk_test",
      fetch: async (request) => {
        assert.equal(request.headers.get("accept"), "text/event-stream");
        assert.equal(((await request.json()) as { stream: boolean }).stream, true);
        return new Response(streamOf([body]), { status: 200, headers: { "Content-Type": "text/event-stream" } });
      },
    });
  }

  test("an error event after deltas is thrown as its typed error", async () => {
    const client = sseClient(
      'event: delta\ndata: {"text":"Hel"}\n\nevent: delta\ndata: {"text":"lo"}\n\n' +
        `event: error\ndata: ${JSON.stringify(ERROR("subject_forgotten"))}\n\n`,
    );
    const stream = client.chat.stream({ subject: "s", message: "hi" });
    const deltas: string[] = [];
    await assert.rejects(async () => {
      for await (const delta of stream) deltas.push(delta);
    }, SubjectForgottenError);
    assert.deepEqual(deltas, ["Hel", "lo"]);
    await assert.rejects(stream.final(), SubjectForgottenError);
  });

  test("a stream cut before its done event is an error, not a silent end", async () => {
    const stream = sseClient('event: delta\ndata: {"text":"Hel"}\n\n').chat.stream({ subject: "s", message: "hi" });
    await assert.rejects(stream.final(), (error: SealmemError) => error.code === "connection_error");
  });
});
