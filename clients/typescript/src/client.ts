/**
 * The Sealmem client: a thin layer over a typed `openapi-fetch` client (types generated from the server's
 * OpenAPI document in `openapi.json`) for authentication, typed errors, retries, pagination and streaming chat.
 * Everything not wrapped here is reachable, still typed, through {@link SealmemClient.raw}.
 */

import createClient, { type Client } from "openapi-fetch";

import { connectionError, errorFromBody, errorFromResponse, SealmemError } from "./errors.js";
import { retryingFetch, type RetryOptions } from "./retry.js";
import type { components, operations, paths } from "./schema.js";
import { readServerSentEvents } from "./sse.js";

export type Schemas = components["schemas"];
export type Memory = Schemas["MemoryOut"];
export type MemoryCreate = Schemas["MemoryCreate"];
export type MemoryUpdate = Schemas["MemoryUpdate"];
export type MemoryPage = Schemas["MemoryPage"];
export type SearchRequest = Schemas["SearchRequest"];
export type SearchFilters = Schemas["SearchFilters"];
export type SearchResult = Schemas["SearchResult"];
export type MemoryHistory = Schemas["HistoryResponse"];
export type IngestRequest = Omit<Schemas["IngestRequest"], "async">;
export type IngestMessage = Schemas["IngestMessage"];
export type IngestEvent = Schemas["IngestEvent"];
export type IngestResult = Schemas["IngestResult"];
export type IngestJob = Schemas["IngestJobOut"];
export type TokenRequest = Schemas["TokenRequest"];
export type TokenResponse = Schemas["TokenResponse"];
export type Scope = TokenRequest["scopes"] extends (infer S)[] | undefined ? S : never;
export type ChatRequest = Omit<Schemas["ChatBody"], "stream">;
export type ChatResponse = Schemas["ChatResponse"];
export type SubjectInfo = Schemas["SubjectOut"];
export type SubjectPage = Schemas["SubjectPage"];
export type AuditEntry = Schemas["AuditEntryOut"];
export type AuditPage = Schemas["AuditPage"];
export type AuditVerification = Schemas["AuditVerifyOut"];
export type Stats = Schemas["StatsOut"];
export type SubjectExport = Schemas["SubjectExport"];
export type ForgetResult = Schemas["ForgetResult"];
export type ApiKey = Schemas["KeyOut"];
export type ApiKeyCreated = Schemas["KeyCreated"];
export type KeyRole = Schemas["KeyCreate"]["role"];
export type SessionInfo = Schemas["SessionOut"];
export type SessionDetail = Schemas["SessionDetail"];
export type Desensitisation = Schemas["DesensitisationOut"];
export type DesensitisationUpdate = Schemas["DesensitisationUpdate"];

type Query<Op extends keyof operations> = operations[Op]["parameters"] extends { query?: infer Q } ? NonNullable<Q> : never;
export type MemoryListParams = Omit<Query<"memories_list">, "cursor">;
export type AdminMemoryListParams = Omit<Query<"admin_memories_list">, "cursor">;
export type AuditListParams = Omit<Query<"admin_audit_list">, "cursor">;
export type SubjectListParams = Omit<Query<"admin_subjects_list">, "offset">;

export type Fetch = (request: Request) => Promise<Response>;

export interface SealmemClientOptions {
  /** The server, e.g. `http://localhost:8080` (no `/v1`). */
  baseUrl: string;
  /**
   * The credential sent as `Authorization: Bearer ...`: an API key (`smk_...`) or a subject token minted with
   * {@link TokensApi.create}. `apiKey` and `token` are aliases; give one.
   */
  apiKey?: string;
  token?: string;
  /** Retries on 429/503 (honouring `Retry-After`); `false` disables them. */
  retry?: RetryOptions | false;
  /** Per-attempt timeout in ms (default 60 000; 0: none). For a chat stream, only until its headers arrive. */
  timeoutMs?: number;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
  /** The `fetch` to use (default: the global one). */
  fetch?: Fetch;
}

export interface RequestOptions {
  /** Cancels the request (and any retry wait). */
  signal?: AbortSignal;
  /** Extra headers, e.g. `X-Request-ID` for correlation. */
  headers?: Record<string, string>;
}

type Result<T> = { data?: T; error?: unknown; response: Response };

function timedFetch(base: Fetch, timeoutMs: number, untilHeaders: boolean): Fetch {
  if (!timeoutMs) return base;
  return async (request) => {
    const controller = new AbortController();
    const timer = setTimeout(
      () => controller.abort(new DOMException(`no answer in ${timeoutMs} ms`, "TimeoutError")),
      timeoutMs,
    );
    timer.unref?.();
    try {
      const response = await base(
        new Request(request, { signal: AbortSignal.any([request.signal, controller.signal]) }),
      );
      if (untilHeaders) clearTimeout(timer);
      return response;
    } catch (error) {
      clearTimeout(timer);
      throw error;
    }
  };
}

/** A Sealmem client. Cheap to create; share one per credential. */
export class SealmemClient {
  /** The typed `openapi-fetch` client underneath (same auth, retries and timeout), for any operation. */
  readonly raw: Client<paths>;
  readonly memories: MemoriesApi;
  readonly tokens: TokensApi;
  readonly chat: ChatApi;
  readonly sessions: SessionsApi;
  readonly admin: AdminApi;
  /** Private (not an own enumerable property), so logging a client never prints its credential. */
  readonly #options: Readonly<SealmemClientOptions>;
  /** @internal fetch for streams: retries, and a timeout that ends when the headers arrive. */
  readonly streamFetch: Fetch;

  constructor(options: SealmemClientOptions) {
    if (!options.baseUrl) throw new TypeError("baseUrl is required");
    if (options.apiKey && options.token && options.apiKey !== options.token) {
      throw new TypeError("give apiKey or token, not both");
    }
    this.#options = { ...options };
    const credential = options.apiKey ?? options.token;
    const base: Fetch = options.fetch ?? ((request) => globalThis.fetch(request));
    const timeoutMs = options.timeoutMs ?? 60_000;
    const wrap = (untilHeaders: boolean): Fetch => {
      const timed = timedFetch(base, timeoutMs, untilHeaders);
      return options.retry === false ? timed : retryingFetch(timed, options.retry);
    };
    this.streamFetch = wrap(true);
    this.raw = createClient<paths>({
      baseUrl: options.baseUrl.replace(/\/+$/, ""),
      fetch: wrap(false),
      headers: {
        ...(credential ? { Authorization: `Bearer ${credential}` } : {}),
        ...options.headers,
      },
    });
    this.memories = new MemoriesApi(this);
    this.tokens = new TokensApi(this);
    this.chat = new ChatApi(this);
    this.sessions = new SessionsApi(this);
    this.admin = new AdminApi(this);
  }

  /** The same client with another credential (e.g. a subject token it minted). */
  withCredential(credential: string): SealmemClient {
    return new SealmemClient({ ...this.#options, apiKey: undefined, token: credential });
  }

  /**
   * Mint a subject token (`POST /v1/tokens`, admin or app key) and return a client that uses it: one end
   * user's client, which reaches only that subject's memories, with the given scopes.
   */
  async asSubject(request: TokenRequest, opts?: RequestOptions): Promise<SealmemClient> {
    const minted = await this.tokens.create(request, opts);
    return this.withCredential(minted.token);
  }

  /** `GET /readyz`: true when the server is ready to serve. */
  async ready(opts?: RequestOptions): Promise<boolean> {
    try {
      await this.call(this.raw.GET("/readyz", { ...opts }));
      return true;
    } catch (error) {
      if (error instanceof SealmemError && error.status === 503) return false;
      throw error;
    }
  }

  /**
   * @internal Await an `openapi-fetch` call and return its data, or throw the {@link SealmemError} of its
   * error answer (a connection failure: `ConnectionError`; the caller's own abort is rethrown as is).
   */
  async call<T>(pending: Promise<Result<T>>): Promise<T> {
    let result: Result<T>;
    try {
      result = await pending;
    } catch (error) {
      if (error instanceof SealmemError) throw error;
      if (error instanceof Error && error.name === "AbortError") throw error;
      throw connectionError(error);
    }
    if (!result.response.ok) throw errorFromResponse(result.response, result.error);
    return result.data as T;
  }
}

/** Iterate a cursor-paginated listing to its end. */
async function* byCursor<T, P extends { next_cursor: string | null }>(
  first: string | null | undefined,
  fetchPage: (cursor: string | undefined) => Promise<P>,
  items: (page: P) => T[],
): AsyncGenerator<T, void, undefined> {
  let cursor: string | null | undefined = first;
  do {
    const page = await fetchPage(cursor ?? undefined);
    yield* items(page);
    cursor = page.next_cursor;
  } while (cursor);
}

/** `/v1/memories`: a subject's memories (`subject` may be omitted with a subject token). */
export class MemoriesApi {
  constructor(private readonly client: SealmemClient) {}

  /** `POST /v1/memories` (memories_add): one memory. */
  async add(memory: MemoryCreate, opts?: RequestOptions): Promise<Memory> {
    return (await this.client.call(this.client.raw.POST("/v1/memories", { body: memory, ...opts }))) as Memory;
  }

  /** `POST /v1/memories/batch` (memories_add_batch): all or nothing. */
  async addBatch(memories: MemoryCreate[], opts?: RequestOptions): Promise<Memory[]> {
    const out = await this.client.call(this.client.raw.POST("/v1/memories/batch", { body: { memories }, ...opts }));
    return out.memories;
  }

  /** `GET /v1/memories/{id}`. */
  get(memoryId: string, opts?: RequestOptions): Promise<Memory> {
    return this.client.call(
      this.client.raw.GET("/v1/memories/{memory_id}", { params: { path: { memory_id: memoryId } }, ...opts }),
    );
  }

  /** `PATCH /v1/memories/{id}`: any of text, metadata, kind, importance, expires_at (null clears). */
  update(memoryId: string, changes: MemoryUpdate, opts?: RequestOptions): Promise<Memory> {
    return this.client.call(
      this.client.raw.PATCH("/v1/memories/{memory_id}", {
        params: { path: { memory_id: memoryId } },
        body: changes,
        ...opts,
      }),
    );
  }

  /** `DELETE /v1/memories/{id}`. */
  async delete(memoryId: string, opts?: RequestOptions): Promise<void> {
    await this.client.call(
      this.client.raw.DELETE("/v1/memories/{memory_id}", { params: { path: { memory_id: memoryId } }, ...opts }),
    );
  }

  /** `GET /v1/memories/{id}/history`. */
  history(memoryId: string, opts?: RequestOptions): Promise<MemoryHistory> {
    return this.client.call(
      this.client.raw.GET("/v1/memories/{memory_id}/history", {
        params: { path: { memory_id: memoryId } },
        ...opts,
      }),
    );
  }

  /** `POST /v1/memories/search` (memories_search): results, best first. */
  async search(request: SearchRequest, opts?: RequestOptions): Promise<SearchResult[]> {
    const out = await this.client.call(this.client.raw.POST("/v1/memories/search", { body: request, ...opts }));
    return out.results;
  }

  /**
   * `POST /v1/memories/ingest` (memories_ingest): distil a conversation into memories and answer what happened,
   * one event per statement (`ADD`, `UPDATE` with the previous text, `SUPERSEDE` with the memories it replaces,
   * `NOOP`), each with its memory id.
   */
  async ingest(request: IngestRequest, opts?: RequestOptions): Promise<IngestResult> {
    const body = { ...request, async: false };
    return (await this.client.call(this.client.raw.POST("/v1/memories/ingest", { body, ...opts }))) as IngestResult;
  }

  /** The same in the background: answers a job at once (202); follow it with {@link ingestJob}/{@link waitForIngest}. */
  async ingestAsync(request: IngestRequest, opts?: RequestOptions): Promise<IngestJob> {
    const body = { ...request, async: true };
    return (await this.client.call(this.client.raw.POST("/v1/memories/ingest", { body, ...opts }))) as IngestJob;
  }

  /** `GET /v1/memories/ingest/{job_id}` (memories_ingest_status). */
  ingestJob(jobId: string, opts?: RequestOptions): Promise<IngestJob> {
    return this.client.call(
      this.client.raw.GET("/v1/memories/ingest/{job_id}", { params: { path: { job_id: jobId } }, ...opts }),
    );
  }

  /** Poll an ingestion job until it is no longer queued or running (every `intervalMs`, at most `timeoutMs`). */
  async waitForIngest(
    jobId: string,
    { intervalMs = 250, timeoutMs = 60_000, ...opts }: RequestOptions & { intervalMs?: number; timeoutMs?: number } = {},
  ): Promise<IngestJob> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = await this.ingestJob(jobId, opts);
      if (job.status !== "queued" && job.status !== "running") return job;
      if (Date.now() + intervalMs > deadline) {
        throw new Error(`ingestion job ${jobId} still ${job.status} after ${timeoutMs} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }

  /** One page of `GET /v1/memories` (newest first); pass its `next_cursor` as `cursor` for the next. */
  listPage(params: MemoryListParams & { cursor?: string }, opts?: RequestOptions): Promise<MemoryPage> {
    return this.client.call(this.client.raw.GET("/v1/memories", { params: { query: params }, ...opts }));
  }

  /** Every memory of `GET /v1/memories`, newest first, fetching pages of `limit` as the loop goes. */
  list(params: MemoryListParams = {}, opts?: RequestOptions): AsyncGenerator<Memory, void, undefined> {
    return byCursor(
      undefined,
      (cursor) => this.listPage({ ...params, cursor }, opts),
      (page) => page.items,
    );
  }
}

/** `/v1/tokens`: subject tokens for end-user clients. */
export class TokensApi {
  constructor(private readonly client: SealmemClient) {}

  /**
   * `POST /v1/tokens` (admin or app key): `{subject, scopes?: ["read"|"write"|"chat"], ttl_seconds?}`.
   * Use the returned `token` as a client's credential (see {@link SealmemClient.asSubject}).
   */
  create(request: TokenRequest, opts?: RequestOptions): Promise<TokenResponse> {
    return this.client.call(this.client.raw.POST("/v1/tokens", { body: request, ...opts }));
  }
}

/**
 * A streaming chat reply: iterate it for the text deltas as they are generated, then `await final()` for the
 * full response (the `done` event). The request starts on the first `next()` (or `final()`). An `error` event
 * is thrown as a {@link SealmemError} (its status derived from its code), from the loop or from `final()`.
 */
export class ChatStream implements AsyncIterable<string> {
  private readonly deltas: AsyncGenerator<string, void, undefined>;
  private result: ChatResponse | null = null;
  private failure: unknown = null;
  private iterated = false;
  private parts: string[] = [];

  constructor(private readonly open: () => Promise<ReadableStream<Uint8Array>>) {
    this.deltas = this.run();
  }

  private async *run(): AsyncGenerator<string, void, undefined> {
    try {
      const body = await this.open();
      for await (const event of readServerSentEvents(body)) {
        if (event.event === "delta") {
          const text = (JSON.parse(event.data) as { text: string }).text;
          this.parts.push(text);
          yield text;
        } else if (event.event === "done") {
          this.result = JSON.parse(event.data) as ChatResponse;
          return;
        } else if (event.event === "error") {
          throw errorFromBody(JSON.parse(event.data));
        }
      }
      throw connectionError(new Error("the chat stream ended without its done event"));
    } catch (error) {
      this.failure = error;
      throw error;
    }
  }

  [Symbol.asyncIterator](): AsyncGenerator<string, void, undefined> {
    if (this.iterated) throw new Error("a ChatStream can be iterated once");
    this.iterated = true;
    return this.deltas;
  }

  /** The text received so far. */
  get text(): string {
    return this.parts.join("");
  }

  /** The full response of the `done` event; reads whatever the loop has not read yet. */
  async final(): Promise<ChatResponse> {
    if (this.failure) throw this.failure;
    if (!this.result) {
      this.iterated = true;
      for (;;) {
        const step = await this.deltas.next();
        if (step.done) break;
      }
    }
    if (!this.result) throw new Error("the chat stream was closed before its end");
    return this.result;
  }
}

/** `POST /v1/chat`: chat with memory. */
export class ChatApi {
  constructor(private readonly client: SealmemClient) {}

  /** The whole reply at once. */
  async send(request: ChatRequest, opts?: RequestOptions): Promise<ChatResponse> {
    const body = { ...request, stream: false };
    return (await this.client.call(this.client.raw.POST("/v1/chat", { body, ...opts }))) as ChatResponse;
  }

  /**
   * The reply as it is generated: `for await (const delta of client.chat.stream({...}))`, then
   * `await stream.final()`. Errors before the first delta (auth, validation, a full queue) are thrown with
   * their HTTP status, and 429/503 are retried like any request.
   */
  stream(request: ChatRequest, opts?: RequestOptions): ChatStream {
    return new ChatStream(async () => {
      const body = await this.client.call(
        this.client.raw.POST("/v1/chat", {
          body: { ...request, stream: true },
          parseAs: "stream",
          fetch: this.client.streamFetch,
          ...opts,
          headers: { Accept: "text/event-stream", ...opts?.headers },
        }),
      );
      if (!body) throw connectionError(new Error("the chat stream has no body"));
      return body;
    });
  }
}

/** `/v1/sessions`: a subject's chat sessions (working memory). */
export class SessionsApi {
  constructor(private readonly client: SealmemClient) {}

  async list(params: Query<"sessions_list"> = {}, opts?: RequestOptions): Promise<SessionInfo[]> {
    const out = await this.client.call(this.client.raw.GET("/v1/sessions", { params: { query: params }, ...opts }));
    return out.sessions;
  }

  get(sessionId: string, params: Query<"sessions_get"> = {}, opts?: RequestOptions): Promise<SessionDetail> {
    return this.client.call(
      this.client.raw.GET("/v1/sessions/{session_id}", {
        params: { path: { session_id: sessionId }, query: params },
        ...opts,
      }),
    );
  }

  async delete(sessionId: string, params: Query<"sessions_delete"> = {}, opts?: RequestOptions): Promise<void> {
    await this.client.call(
      this.client.raw.DELETE("/v1/sessions/{session_id}", {
        params: { path: { session_id: sessionId }, query: params },
        ...opts,
      }),
    );
  }
}

/** `/v1/admin/*` (admin key, own tenant only). */
export class AdminApi {
  readonly keys: AdminKeysApi;

  constructor(private readonly client: SealmemClient) {
    this.keys = new AdminKeysApi(client);
  }

  /** Every memory across subjects (`GET /v1/admin/memories`), newest first. */
  memories(params: AdminMemoryListParams = {}, opts?: RequestOptions): AsyncGenerator<Memory, void, undefined> {
    return byCursor(
      undefined,
      (cursor) =>
        this.client.call(this.client.raw.GET("/v1/admin/memories", { params: { query: { ...params, cursor } }, ...opts })),
      (page) => page.items,
    );
  }

  /** Every subject (`GET /v1/admin/subjects`, paged by `offset`/`next_offset`). */
  async *subjects(params: SubjectListParams = {}, opts?: RequestOptions): AsyncGenerator<SubjectInfo, void, undefined> {
    let offset: number | null = 0;
    while (offset !== null) {
      const page: SubjectPage = await this.client.call(
        this.client.raw.GET("/v1/admin/subjects", { params: { query: { ...params, offset } }, ...opts }),
      );
      yield* page.subjects;
      offset = page.next_offset;
    }
  }

  /** Every audit record (`GET /v1/admin/audit`), newest first. */
  audit(params: AuditListParams = {}, opts?: RequestOptions): AsyncGenerator<AuditEntry, void, undefined> {
    return byCursor(
      undefined,
      (cursor) => this.client.call(this.client.raw.GET("/v1/admin/audit", { params: { query: { ...params, cursor } }, ...opts })),
      (page) => page.items,
    );
  }

  verifyAudit(opts?: RequestOptions): Promise<AuditVerification> {
    return this.client.call(this.client.raw.GET("/v1/admin/audit/verify", { ...opts }));
  }

  stats(opts?: RequestOptions): Promise<Stats> {
    return this.client.call(this.client.raw.GET("/v1/admin/stats", { ...opts }));
  }

  exportSubject(subject: string, opts?: RequestOptions): Promise<SubjectExport> {
    return this.client.call(
      this.client.raw.GET("/v1/admin/subjects/{subject}/export", { params: { path: { subject } }, ...opts }),
    );
  }

  /** Forget a subject (crypto-shred): `DELETE /v1/admin/subjects/{subject}`. */
  forgetSubject(subject: string, opts?: RequestOptions): Promise<ForgetResult> {
    return this.client.call(
      this.client.raw.DELETE("/v1/admin/subjects/{subject}", { params: { path: { subject } }, ...opts }),
    );
  }

  getDesensitisation(opts?: RequestOptions): Promise<Desensitisation> {
    return this.client.call(this.client.raw.GET("/v1/admin/desensitisation", { ...opts }));
  }

  updateDesensitisation(changes: DesensitisationUpdate, opts?: RequestOptions): Promise<Desensitisation> {
    return this.client.call(this.client.raw.PATCH("/v1/admin/desensitisation", { body: changes, ...opts }));
  }
}

/** `/v1/admin/keys`. */
export class AdminKeysApi {
  constructor(private readonly client: SealmemClient) {}

  async list(opts?: RequestOptions): Promise<ApiKey[]> {
    const out = await this.client.call(this.client.raw.GET("/v1/admin/keys", { ...opts }));
    return out.keys;
  }

  /** A new key; its secret (`key`) is shown only in this answer. */
  create(request: { role: KeyRole; name: string }, opts?: RequestOptions): Promise<ApiKeyCreated> {
    return this.client.call(this.client.raw.POST("/v1/admin/keys", { body: request, ...opts }));
  }

  /** Revoke a key (and every subject token it minted). */
  async revoke(keyId: string, opts?: RequestOptions): Promise<void> {
    await this.client.call(
      this.client.raw.DELETE("/v1/admin/keys/{key_id}", { params: { path: { key_id: keyId } }, ...opts }),
    );
  }
}
