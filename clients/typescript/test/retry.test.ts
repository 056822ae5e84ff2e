import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { RateLimitedError, SealmemClient, type RetryInfo } from "../src/index.js";
import { BASE_URL, keyClient, NEEDS_SERVER, uniqueSubject } from "./helpers.js";

// The server runs with a small per-subject limit for subject tokens (SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE=60:
// one request a second once the burst of 10 is spent), so a real 429 with Retry-After comes quickly.
describe("Retry-After on a real 429", { skip: NEEDS_SERVER }, () => {
  test("the client waits Retry-After seconds and then succeeds", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-rl");
    await app.memories.add({ subject, text: "Rate limits are per subject." });
    const minted = await app.tokens.create({ subject, scopes: ["read"] });

    // Spend the subject's bucket without retries, until the server refuses.
    const impatient = new SealmemClient({ baseUrl: BASE_URL, token: minted.token, retry: false });
    let refusal: RateLimitedError | undefined;
    for (let i = 0; i < 50 && !refusal; i++) {
      try {
        await impatient.memories.listPage({ limit: 1 });
      } catch (error) {
        if (!(error instanceof RateLimitedError)) throw error;
        refusal = error;
      }
    }
    assert.ok(refusal, "the server answered 429 within 50 requests");
    assert.equal(refusal.status, 429);
    assert.equal(refusal.code, "rate_limited");
    assert.ok(refusal.retryAfter !== null && refusal.retryAfter >= 1, `Retry-After ${refusal.retryAfter}`);

    // The same subject (its bucket is shared by all its tokens): the retrying client honours Retry-After.
    const retries: RetryInfo[] = [];
    const patient = new SealmemClient({
      baseUrl: BASE_URL,
      token: minted.token,
      retry: { maxRetries: 3, maxRetryAfterMs: 5_000, onRetry: (info) => retries.push(info) },
    });
    const started = performance.now();
    const page = await patient.memories.listPage({ limit: 1 });
    const elapsed = performance.now() - started;
    assert.equal(page.items.length, 1);
    assert.ok(retries.length >= 1, "at least one retry");
    const first = retries[0]!;
    assert.equal(first.status, 429);
    assert.ok(first.retryAfter !== null && first.retryAfter >= 1);
    assert.equal(first.delayMs, first.retryAfter * 1000, "waited exactly Retry-After");
    assert.ok(elapsed >= first.delayMs - 50, `elapsed ${elapsed} ms >= ${first.delayMs} ms`);
  });

  test("a Retry-After longer than maxRetryAfterMs is not waited for", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-rl2");
    await app.memories.add({ subject, text: "Rate limits are per subject." });
    const minted = await app.tokens.create({ subject, scopes: ["read"] });
    const retries: RetryInfo[] = [];
    const client = new SealmemClient({
      baseUrl: BASE_URL,
      token: minted.token,
      retry: { maxRetries: 3, maxRetryAfterMs: 0, onRetry: (info) => retries.push(info) },
    });
    let refusal: unknown;
    for (let i = 0; i < 50 && !refusal; i++) {
      await client.memories.listPage({ limit: 1 }).catch((error: unknown) => (refusal = error));
    }
    assert.ok(refusal instanceof RateLimitedError, String(refusal));
    assert.equal(retries.length, 0);
  });
});
