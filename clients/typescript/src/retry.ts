/** Retries with backoff on 429 and 503, honouring `Retry-After`: a `fetch` wrapper. */

import { parseRetryAfter } from "./errors.js";

export interface RetryInfo {
  /** 1 for the first retry. */
  attempt: number;
  /** How long the client waits before this retry. */
  delayMs: number;
  /** The status that caused it (0: the connection failed). */
  status: number;
  /** `Retry-After` in seconds, when the server sent one. */
  retryAfter: number | null;
  method: string;
  url: string;
}

export interface RetryOptions {
  /** Retries after the first attempt (default 2; 0 disables retries). */
  maxRetries?: number;
  /** First backoff step when the server sends no `Retry-After` (default 500 ms), doubled each retry. */
  baseDelayMs?: number;
  /** Cap of the computed backoff (default 8000 ms). */
  maxDelayMs?: number;
  /**
   * Longest `Retry-After` the client waits for (default 60 000 ms); when the server asks for longer, the
   * error is thrown at once (its `retryAfter` says how long).
   */
  maxRetryAfterMs?: number;
  /** Statuses retried (default 429 and 503). */
  statuses?: readonly number[];
  /** Called before each retry's wait (logging, metrics, tests). */
  onRetry?: (info: RetryInfo) => void;
}

export const DEFAULT_RETRY = {
  maxRetries: 2,
  baseDelayMs: 500,
  maxDelayMs: 8000,
  maxRetryAfterMs: 60_000,
  statuses: [429, 503] as readonly number[],
};

type Fetch = (request: Request) => Promise<Response>;

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS"]);

function sleep(ms: number, signal: AbortSignal | null | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * `fetch` that retries the refused statuses (429, 503: the server did nothing) with exponential backoff and
 * full jitter, or exactly `Retry-After` when the server sends it. A failed connection is retried only for
 * GET/HEAD (a POST may have been applied).
 */
export function retryingFetch(base: Fetch, options: RetryOptions = {}): Fetch {
  const opts = { ...DEFAULT_RETRY, ...options };
  return async (request: Request): Promise<Response> => {
    for (let attempt = 0; ; attempt++) {
      const last = attempt >= opts.maxRetries;
      // Keep `request` unsent as the template of later attempts (its body can be read only once).
      const sent = last ? request : request.clone();
      let response: Response;
      try {
        response = await base(sent);
      } catch (error) {
        if (last || !IDEMPOTENT.has(request.method) || request.signal?.aborted) throw error;
        const delayMs = backoff(attempt, opts);
        opts.onRetry?.({ attempt: attempt + 1, delayMs, status: 0, retryAfter: null, method: request.method, url: request.url });
        await sleep(delayMs, request.signal);
        continue;
      }
      if (last || !opts.statuses.includes(response.status)) return response;
      const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
      if (retryAfter !== null && retryAfter * 1000 > opts.maxRetryAfterMs) return response;
      const delayMs = retryAfter !== null ? retryAfter * 1000 : backoff(attempt, opts);
      await response.body?.cancel().catch(() => undefined);
      opts.onRetry?.({ attempt: attempt + 1, delayMs, status: response.status, retryAfter, method: request.method, url: request.url });
      await sleep(delayMs, request.signal);
    }
  };
}

function backoff(attempt: number, opts: typeof DEFAULT_RETRY): number {
  const ceiling = Math.min(opts.maxDelayMs, opts.baseDelayMs * 2 ** attempt);
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2); // "equal jitter": never near zero
}
