/** A small Server-Sent Events reader (the parts of the WHATWG format Sealmem uses, and the rest tolerated). */

export interface ServerSentEvent {
  /** `event:` field; "message" when absent. */
  event: string;
  /** The `data:` lines, joined with "\n". */
  data: string;
  id?: string;
}

/** Parse a byte stream of Server-Sent Events into events, as they arrive. */
export async function* readServerSentEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<ServerSentEvent, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data: string[] = [];
  let id: string | undefined;
  let pendingCR = false; // a chunk ended in "\r": a following "\n" belongs to the same line break
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let chunk = decoder.decode(value, { stream: true });
      if (pendingCR && chunk.startsWith("\n")) chunk = chunk.slice(1);
      pendingCR = chunk.endsWith("\r");
      buffer += chunk;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop() ?? "";
      for (const line of lines) {
        if (line === "") {
          if (data.length > 0 || event) yield { event: event || "message", data: data.join("\n"), id };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // comment / keep-alive
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let content = colon === -1 ? "" : line.slice(colon + 1);
        if (content.startsWith(" ")) content = content.slice(1);
        if (field === "event") event = content;
        else if (field === "data") data.push(content);
        else if (field === "id") id = content;
      }
    }
    // A final event without its blank line is dropped, as the format says (an incomplete event).
  } finally {
    // Stops the download when the caller leaves early (break, throw); a no-op after the end.
    await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
