import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ForbiddenError,
  InvalidInputError,
  NotFoundError,
  SealmemClient,
  SealmemError,
  UnauthorizedError,
} from "../src/index.js";
import { BASE_URL, keyClient, NEEDS_SERVER, uniqueSubject } from "./helpers.js";

/** Run `fn`, expect it to throw a SealmemError, and return it. */
async function caught(fn: () => Promise<unknown>): Promise<SealmemError> {
  try {
    await fn();
  } catch (error) {
    assert.ok(error instanceof SealmemError, `a SealmemError, not ${String(error)}`);
    return error;
  }
  assert.fail("no error was thrown");
}

describe("typed errors from a live server", { skip: NEEDS_SERVER }, () => {
  test("404 not_found", async () => {
    const app = await keyClient("app");
    const error = await caught(() => app.memories.get("00000000-0000-4000-8000-000000000000"));
    assert.ok(error instanceof NotFoundError);
    assert.equal(error.code, "not_found");
    assert.equal(error.status, 404);
    assert.equal(error.name, "NotFoundError");
    assert.match(error.requestId ?? "", /^[0-9a-f]{32}$/);
    assert.equal(error.requestId, error.headers?.get("x-request-id"));
    assert.ok(error.message.length > 0);
    assert.deepEqual(Object.keys((error.body as { error: object }).error).sort(), ["code", "message", "request_id"]);
  });

  test("403 forbidden: a reader key writing", async () => {
    const reader = await keyClient("reader");
    const error = await caught(() => reader.memories.add({ subject: uniqueSubject("ts-reader"), text: "Nope." }));
    assert.ok(error instanceof ForbiddenError);
    assert.equal(error.code, "forbidden");
    assert.equal(error.status, 403);
  });

  test("401 unauthorized: an unknown key, and no key", async () => {
    const bogus = new SealmemClient({ baseUrl: BASE_URL, apiKey: "smk_" + "A".repeat(43) });
    const error = await caught(() => bogus.memories.listPage({ subject: "anyone" }));
    assert.ok(error instanceof UnauthorizedError);
    assert.equal(error.code, "unauthorized");
    assert.equal(error.status, 401);

    const anonymous = new SealmemClient({ baseUrl: BASE_URL });
    assert.ok((await caught(() => anonymous.admin.stats())) instanceof UnauthorizedError);
  });

  test("422 invalid_input, with a discriminant to switch on", async () => {
    const app = await keyClient("app");
    const error = await caught(() => app.memories.add({ subject: uniqueSubject("ts-bad"), text: "x", importance: 7 }));
    assert.ok(error instanceof InvalidInputError);
    switch (error.code) {
      case "invalid_input":
        assert.match(error.message, /importance/);
        break;
      default:
        assert.fail(`unexpected code ${error.code}`);
    }
  });

  test("no server: a ConnectionError with status 0", async () => {
    const nowhere = new SealmemClient({ baseUrl: "http://127.0.0.1:9", apiKey: "smk_x", retry: false });
    const error = await caught(() => nowhere.memories.listPage({ subject: "s" }));
    assert.equal(error.code, "connection_error");
    assert.equal(error.status, 0);
  });
});
