-- wrk script for bench/load.py --driver wrk: searches (share SM_SEARCH_SHARE, default 0.7) and single adds over
-- subjects <SM_PREFIX>0..<SM_PREFIX>(SM_SUBJECTS-1); credential from SM_KEY. Prints one JSON line at the end.
local key = os.getenv("SM_KEY")
local prefix = os.getenv("SM_PREFIX") or "user-"
local subjects = tonumber(os.getenv("SM_SUBJECTS")) or 50
local share = tonumber(os.getenv("SM_SEARCH_SHARE")) or 0.7
local words = {"dog","cat","Lisbon","Porto","jazz","chess","sushi","hiking","poetry","tennis","baking","cycling",
               "sailing","cello","garden","coffee","marathon","museum","pottery","camping"}
local n = 0
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
request = function()
  n = n + 1
  local s = prefix .. math.random(0, subjects - 1)
  local a, b = words[math.random(#words)], words[math.random(#words)]
  local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
  if math.random() < share then
    return wrk.format("POST", "/v1/memories/search", headers,
      string.format('{"subject":"%s","query":"what do I think about %s and %s?","k":10}', s, a, b))
  end
  return wrk.format("POST", "/v1/memories", headers,
    string.format('{"subject":"%s","text":"I really enjoy %s, and last week I tried %s again (note %d)."}', s, a, b, n))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"seconds":%.2f,"rps":%.1f,"p50_ms":%.1f,"p90_ms":%.1f,"p99_ms":%.1f,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
