-- Switchboard's rate limits and response cache (gateway/ledger.py, gateway/limits.py): a batch of a gateway's
-- Redis work (what it queued while its previous call was out), in one atomic call.
-- KEYS: every key the call touches (limit states and cache entries), each once.
-- ARGV[1]: JSON [settlements, writes, plans, admissions]; ARGV[2..]: the values of the writes.
--   settlement: [key, per_minute, units]: move a limit by a signed number of units (a token correction);
--   write: [key, ttl_ms, argv]: SET KEYS[key] to ARGV[argv] for ttl_ms (a cache entry);
--   plan: per limit key, per_minute, tokens (true: a request costs its tokens, false: 1): a set of limits;
--   admission: [plan (0: none), tokens, cache key (0: none), leases (0: none)]: charge one request; leases:
--   per limit of its plan, units to take ahead for the gateway to hand out itself (gateway/leases.py; 0: none
--   for that limit), all of those asked for or none.
-- Keys are indexes into KEYS, plans into the plans. Settlements and writes come first: admissions see them.
-- Returns one row per admission: {allowed, per limit: remaining, reset_ms, retry_ms, leased, then the cache
-- entry (false when none was asked for, the request was refused, or there is none)}. A request is charged only
-- when every one of its limits allows it; the admissions are taken in order, each seeing the ones before.
-- Leases are granted, beside the request's own cost, only while each limit asked has room for both: near a
-- limit every request is counted here one by one.
-- State per limit: GCRA's theoretical arrival time (TAT), in ms of Redis time, kept only while ahead of now,
-- with the end of the last block leased on the limit.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = 60000
local call = cjson.decode(ARGV[1])
local tat = {}
local lend = {} -- per limit key: where the last block leased on it ends (a TAT), while it is ahead
local dirty = {}

-- A limit's value: its TAT, then ':' and where its last lease ends, while that is ahead of now.
local function state(i)
  local v = tat[i]
  if v == nil then
    local raw = redis.call('GET', KEYS[i])
    v = now
    if raw then
      local sep = string.find(raw, ':', 1, true)
      if sep then
        v = tonumber(string.sub(raw, 1, sep - 1)) or now
        lend[i] = tonumber(string.sub(raw, sep + 1))
      else
        v = tonumber(raw) or now
      end
    end
  end
  if v < now then v = now end
  return v
end

-- A correction that gives units back never moves a limit's TAT before the end of a block leased on it: the
-- gateway holding that block would hand out slots the limit counts as free again.
for _, s in ipairs(call[1]) do
  local v = state(s[1]) + s[3] * window / s[2]
  local floor = lend[s[1]]
  if s[3] < 0 and floor and v < floor then v = floor end
  tat[s[1]] = v
  dirty[s[1]] = true
end

for _, w in ipairs(call[2]) do
  redis.call('SET', KEYS[w[1]], ARGV[w[3]], 'PX', w[2])
end

local none = {}
local function remaining(ahead, interval)
  local left = math.floor((window - (ahead - now)) / interval + 0.000001)
  if left < 0 then return 0 end
  return left
end
local out = {}
for r, a in ipairs(call[4]) do
  local plan = call[3][a[1]] or none
  local n = #plan / 3
  local row = {1}
  local after = {}
  for j = 1, n do
    local i, per_minute = plan[3 * j - 2], plan[3 * j - 1]
    local cost = 1
    if plan[3 * j] then cost = a[2] end
    local interval = window / per_minute
    local v = state(i)
    local next_tat = v + cost * interval
    local ahead = next_tat
    local retry = 0
    if next_tat - now > window + 0.001 then
      row[1] = 0
      retry = math.ceil(next_tat - now - window)
      ahead = v
    end
    after[j] = next_tat
    row[4 * j - 2] = remaining(ahead, interval)
    row[4 * j - 1] = math.ceil(ahead - now)
    row[4 * j] = retry
    row[4 * j + 1] = 0
  end
  row[4 * n + 2] = false
  if row[1] == 1 then
    local leases = a[4]
    if leases ~= 0 then -- every lease asked for, or none
      local fits = true
      for j = 1, n do
        local want = leases[j] or 0
        if after[j] + want * window / plan[3 * j - 1] - now > window + 0.001 then fits = false end
      end
      if fits then
        for j = 1, n do
          local want = leases[j] or 0
          local interval = window / plan[3 * j - 1]
          after[j] = after[j] + want * interval
          if want > 0 then lend[plan[3 * j - 2]] = after[j] end
          row[4 * j - 2] = remaining(after[j], interval)
          row[4 * j - 1] = math.ceil(after[j] - now)
          row[4 * j + 1] = want
        end
      end
    end
    for j = 1, n do
      tat[plan[3 * j - 2]] = after[j]
      dirty[plan[3 * j - 2]] = true
    end
    if a[3] > 0 then
      row[4 * n + 2] = redis.call('GET', KEYS[a[3]])
    end
  end
  out[r] = row
end

for i in pairs(dirty) do
  local v = tat[i]
  if v > now then
    local value = tostring(v)
    local e = lend[i]
    if e and e > now then value = value .. ':' .. tostring(e) end
    redis.call('SET', KEYS[i], value, 'PX', math.ceil(v - now) + 1000)
  else
    redis.call('DEL', KEYS[i])
  end
end
return out
