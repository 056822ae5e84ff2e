import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { ForbiddenError, type ChatResponse } from "../src/index.js";
import { keyClient, NEEDS_SERVER, uniqueSubject } from "./helpers.js";

// The server's LLM is a scripted OpenAI-compatible server (tests/chat/openai_server.py): it answers
// "You told me: <the injected fact closest to the question>", streamed word by word.
describe("chat against a live server", { skip: NEEDS_SERVER }, () => {
  test("stream: deltas as they come, then the final response", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-chat");
    const memory = await app.memories.add({ subject, text: "My dog is named Biscuit." });

    const stream = app.chat.stream({ subject, message: "What is my dog named?", k: 3 });
    const deltas: string[] = [];
    for await (const delta of stream) deltas.push(delta);
    const final: ChatResponse = await stream.final();

    assert.ok(deltas.length > 1, `several deltas, got ${JSON.stringify(deltas)}`);
    assert.equal(deltas.join("").trim(), final.reply);
    assert.equal(stream.text, deltas.join(""));
    assert.match(final.reply, /Biscuit/);
    assert.ok(final.memories_used.some((m) => m.id === memory.id), "the memory was injected");
    assert.ok(final.session_id);
    assert.ok(final.message_id);
    assert.equal(final.model, "tiny-remote");
    assert.ok(final.usage.completion_tokens > 0);

    // The same session continues; final() alone reads the whole stream.
    const again = app.chat.stream({ subject, session_id: final.session_id, message: "And my dog?" });
    const second = await again.final();
    assert.equal(second.session_id, final.session_id);
    assert.match(second.reply, /Biscuit/);
    const session = await app.sessions.get(final.session_id, { subject });
    assert.ok(session.turns.length >= 4, `4 turns stored, got ${session.turns.length}`);
  });

  test("send: the whole reply at once", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-chat-send");
    await app.memories.add({ subject, text: "I live in Porto." });
    const response = await app.chat.send({ subject, message: "Where do I live?" });
    assert.match(response.reply, /Porto/);
  });

  test("stream with a subject token: needs the chat scope, thrown before the first delta", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-chat-token");
    await app.memories.add({ subject, text: "My favourite colour is teal." });

    const chatter = await app.asSubject({ subject, scopes: ["chat"] });
    const stream = chatter.chat.stream({ message: "What is my favourite colour?" });
    let text = "";
    for await (const delta of stream) text += delta;
    assert.match(text, /teal/);
    assert.equal((await stream.final()).reply, text.trim());

    const reader = await app.asSubject({ subject, scopes: ["read"] });
    const refused = reader.chat.stream({ message: "Hello?" });
    await assert.rejects(async () => {
      for await (const _ of refused) assert.fail("no delta without the chat scope");
    }, ForbiddenError);
    await assert.rejects(refused.final(), ForbiddenError);
  });
});
