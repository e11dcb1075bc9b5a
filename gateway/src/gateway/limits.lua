-- Switchboard's rate limits (gateway/limits.py): GCRA over any number of limits, atomically.
-- KEYS: one per limit, then (optionally) one more: the cache entry to read (admit) or write (settle).
-- ARGV: mode ("admit" or "settle"), the number of limits n, then per limit: its limit a minute and its cost
-- (admit) or signed correction (settle); settle with the extra key: the value to write and its TTL in ms.
-- State per limit: its theoretical arrival time (TAT), in ms of Redis time. admit returns {allowed, per
-- limit: remaining, reset_ms, retry_ms, then the cache entry (nil when none)}; nothing is charged unless
-- every limit allows the request.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = 60000
local mode = ARGV[1]
local n = tonumber(ARGV[2])
if mode == 'settle' then
  for i = 1, n do
    local interval = window / tonumber(ARGV[1 + 2 * i])
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    tat = tat + tonumber(ARGV[2 + 2 * i]) * interval
    if tat > now then
      redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  end
  if #KEYS > n then
    redis.call('SET', KEYS[n + 1], ARGV[3 + 2 * n], 'PX', ARGV[4 + 2 * n])
  end
  return 1
end
local allowed = 1
local out = {0}
local new = {}
for i = 1, n do
  local interval = window / tonumber(ARGV[1 + 2 * i])
  local cost = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local after = tat + cost * interval
  local retry = 0
  local ahead = tat
  if after - now > window + 0.001 then
    allowed = 0
    retry = math.ceil(after - now - window)
  else
    ahead = after
  end
  new[i] = after
  local remaining = math.floor((window - (ahead - now)) / interval + 0.000001)
  if remaining < 0 then remaining = 0 end
  out[3 * i - 1] = remaining
  out[3 * i] = math.ceil(ahead - now)
  out[3 * i + 1] = retry
end
if allowed == 1 then
  for i = 1, n do
    redis.call('SET', KEYS[i], tostring(new[i]), 'PX', math.ceil(new[i] - now) + 1000)
  end
end
out[1] = allowed
if #KEYS > n and allowed == 1 then
  out[3 * n + 2] = redis.call('GET', KEYS[n + 1])
end
return out
