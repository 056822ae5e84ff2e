import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { ForbiddenError, NotFoundError, SealmemClient } from "../src/index.js";
import { BASE_URL, collect, keyClient, NEEDS_SERVER, uniqueSubject } from "./helpers.js";

describe("subject tokens against a live server", { skip: NEEDS_SERVER }, () => {
  test("mint a token; it reaches only its own subject, with its scopes", async () => {
    const app = await keyClient("app");
    const mine = uniqueSubject("ts-token");
    const other = uniqueSubject("ts-other");
    const secret = await app.memories.add({ subject: other, text: "Someone else's secret." });

    const minted = await app.tokens.create({ subject: mine, scopes: ["read", "write"], ttl_seconds: 600 });
    assert.equal(minted.subject, mine);
    assert.deepEqual([...minted.scopes].sort(), ["read", "write"]);
    assert.equal(minted.token_type, "Bearer");
    assert.ok(Date.parse(minted.expires_at) > Date.now() + 500_000);

    const user = new SealmemClient({ baseUrl: BASE_URL, token: minted.token });
    const added = await user.memories.add({ text: "I like green tea." }); // subject comes from the token
    assert.equal(added.subject, mine);
    assert.deepEqual(
      (await collect(user.memories.list())).map((m) => m.id),
      [added.id],
    );
    await assert.rejects(user.memories.get(secret.id), NotFoundError);
    await assert.rejects(user.memories.listPage({ subject: other }), NotFoundError);

    const readOnly = await app.asSubject({ subject: mine, scopes: ["read"] });
    assert.equal((await readOnly.memories.get(added.id)).text, "I like green tea.");
    await assert.rejects(readOnly.memories.add({ text: "Not allowed." }), ForbiddenError);
  });

  test("a reader key cannot mint tokens", async () => {
    const reader = await keyClient("reader");
    await assert.rejects(reader.tokens.create({ subject: uniqueSubject("ts-r"), scopes: ["read"] }), ForbiddenError);
  });
});
