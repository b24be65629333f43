-- lbalgo RedisLedger: every operation of one process is ONE call of this script (EVALSHA).
--
-- Keys, all under the prefix "lbalgo:{namespace}:" (one hash slot):
--   q            ZSET  eligible-somewhere keys; score = count / wbase, member = flag .. t .. key
--                      flag "0" ready (t = virtual finish F) / "1" waiting (t = virtual start S),
--                      t packed big-endian so equal ratios order ready-first, then by t
--   pend         ZSET  waiting keys by S, made ready when the virtual clock passes S
--   vt           STR   the virtual clock V (WF2Q)
--   k:<key>      HASH  c = fleet open count, w = wbase (the largest weight a live process
--                      declares), s = S, r = "1" ready, m = current member in q
--   wc:<key>     HASH  declared weight -> number of live processes declaring it
--   owners       ZSET  owner id -> lease expiry (server time, seconds)
--   held:<owner> HASH  key -> connections that owner holds (what is reclaimed if it dies)
--   elig:<owner> HASH  key -> that owner's effective weight (its eligible set)
--   seen / grace STR   last server time any call ran / no reclaim before this time
--   alive        STR   present while the store holds the fleet's state: missing means it
--                      restarted empty or was flushed, and the fleet is told on "lost"
--   lost         channel (sharded on a Cluster): the owner that found the store empty
--
-- KEYS[1]: the q key, so that a proxy or cluster client routes the call; the script builds
-- every key from the prefix.
-- ARGV: prefix, owner, lease_timeout, full ("1": the lists below are this owner's complete
-- state, replacing what the store has), action ("" | "a" acquire | "t" take | "x" close),
-- the caller's total eligible weight (V moves 1/total per pick), the key to take (or ""),
-- the publish command ("PUBLISH", or "SPUBLISH" on a Cluster), then five counted lists: excluded keys; held (key, n) pairs (full: absolute; else releases);
-- eligible (key, weight) pairs (full: all; else changes); keys to un-declare (not full);
-- keys whose counts to return.
-- Returns {status, picked key or false, counts...}; status "LOST" means the store does not
-- know this owner (new server, or it was reclaimed) and nothing was done; "REBUILT" (only
-- for a full call) means the store had no state (lost, or a new namespace): this owner's
-- state is in, the fleet was told, the action was NOT done, the third item is how many
-- listened.

local P, owner = ARGV[1], ARGV[2]
local lease = tonumber(ARGV[3])
local full = ARGV[4] == "1"
local action, total = ARGV[5], tonumber(ARGV[6])

local Q, PEND, VT, OWNERS = P .. "q", P .. "pend", P .. "vt", P .. "owners"
local HELD, ELIG = P .. "held:" .. owner, P .. "elig:" .. owner

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6

if not full and not redis.call("ZSCORE", OWNERS, owner) then
  return {"LOST", false}
end

local function khash(key) return P .. "k:" .. key end

-- A store that lost everything (restart without persistence, FLUSHALL) would let this call
-- choose on this owner's counts alone: tell every process to put its state back first.
local rebuilt = false
if redis.call("EXISTS", P .. "alive") == 0 then
  redis.call("SET", P .. "alive", "1")
  if full and action ~= "x" then
    rebuilt = redis.call(ARGV[8], P .. "lost", owner)
  end
end

-- Virtual times are floats; rounded to 2^-29 when compared, so that times equal as
-- fractions (1/6 added six times, and 1) compare equal whichever way they were summed.
-- Weights come in units of 1/32 (RAMP_STEPS): every time is 1/32 of what whole weights give,
-- exactly (a power of two), and 2^-29 is 2^-24 on the scale of whole weights.
local GRID = 536870912
local function grid(x) return math.floor(x * GRID + 0.5) / GRID end

-- Put key's member and score in q from its hash (after a count, weight or schedule change).
local function requeue(key)
  local h = redis.call("HMGET", khash(key), "c", "w", "s", "r", "m")
  local w = tonumber(h[2])
  if not w then return end
  local c, s = tonumber(h[1]) or 0, tonumber(h[3])
  local member
  if h[4] == "1" then
    member = "0" .. struct.pack(">d", grid(s + 1 / w)) .. key
  else
    member = "1" .. struct.pack(">d", grid(s)) .. key
  end
  if h[5] and h[5] ~= member then redis.call("ZREM", Q, h[5]) end
  redis.call("ZADD", Q, c / w, member)
  if h[5] ~= member then redis.call("HSET", khash(key), "m", member) end
end

-- Drop a key's hash once nothing refers to it (no count, no declaration).
local function tidy(key)
  local h = redis.call("HMGET", khash(key), "c", "w")
  if (tonumber(h[1]) or 0) == 0 and not h[2] then redis.call("DEL", khash(key)) end
end

local function add_count(key, delta)
  local c = tonumber(redis.call("HGET", khash(key), "c")) or 0
  c = c + delta
  if c < 0 then c = 0 end -- never negative, whatever happened before
  redis.call("HSET", khash(key), "c", c)
  requeue(key)
  if c == 0 then tidy(key) end
end

local function max_weight(key)
  local best = nil
  for _, f in ipairs(redis.call("HKEYS", P .. "wc:" .. key)) do
    local w = tonumber(f)
    if not best or w > best then best = w end
  end
  return best
end

-- One owner changes its declared weight for key: old (or nil) -> new (or nil).
local function declare(key, old, new)
  local wc = P .. "wc:" .. key
  if old then
    if redis.call("HINCRBY", wc, old, -1) <= 0 then redis.call("HDEL", wc, old) end
  end
  if new then redis.call("HINCRBY", wc, new, 1) end
  local kh = khash(key)
  local prev = redis.call("HGET", kh, "w")
  local wb = max_weight(key)
  if not wb then
    local m = redis.call("HGET", kh, "m")
    if m then redis.call("ZREM", Q, m) end
    redis.call("ZREM", PEND, key)
    redis.call("HDEL", kh, "w", "s", "r", "m")
    tidy(key)
  elseif tostring(wb) ~= prev then
    if not prev then -- joins level with the clock, as in WF2Q
      redis.call("HSET", kh, "s", tonumber(redis.call("GET", VT)) or 0, "r", "1")
    end
    redis.call("HSET", kh, "w", wb)
    requeue(key)
  end
end

local function drop_owner(o)
  local held = redis.call("HGETALL", P .. "held:" .. o)
  for i = 1, #held, 2 do add_count(held[i], -tonumber(held[i + 1])) end
  local elig = redis.call("HGETALL", P .. "elig:" .. o)
  for i = 1, #elig, 2 do declare(elig[i], elig[i + 1], nil) end
  redis.call("DEL", P .. "held:" .. o, P .. "elig:" .. o)
  redis.call("ZREM", OWNERS, o)
end

-- Reclaim owners whose lease expired, unless the store itself was unreachable or idle for a
-- while (then every heartbeat is stale and live owners get one lease_timeout to come back).
local seen = tonumber(redis.call("GET", P .. "seen"))
if seen and now - seen > lease / 2 then redis.call("SET", P .. "grace", now + lease) end
redis.call("SET", P .. "seen", now)
if now >= (tonumber(redis.call("GET", P .. "grace")) or 0) then
  for _, o in ipairs(redis.call("ZRANGEBYSCORE", OWNERS, "-inf", now, "LIMIT", 0, 3)) do
    if o ~= owner then drop_owner(o) end
  end
end

if action == "x" then
  drop_owner(owner)
  return {"OK", false}
end
redis.call("ZADD", OWNERS, now + lease, owner)

-- Read the counted lists.
local i = 9
local function list(width)
  local n = tonumber(ARGV[i])
  local items = {}
  for j = 1, n * width, width do
    items[#items + 1] = {ARGV[i + j], ARGV[i + j + 1]}
  end
  i = i + n * width + 1
  return items
end
local excluded = {}
for _, e in ipairs(list(1)) do excluded[e[1]] = true end
local held_list, elig_list, undeclare_list, count_list = list(2), list(2), list(1), list(1)

if full then
  local old, new = {}, {}
  local h = redis.call("HGETALL", HELD)
  for j = 1, #h, 2 do old[h[j]] = tonumber(h[j + 1]) end
  for _, e in ipairs(held_list) do new[e[1]] = tonumber(e[2]) end
  redis.call("DEL", HELD)
  for key, n in pairs(new) do
    if n > 0 then redis.call("HSET", HELD, key, n) end
    if n ~= (old[key] or 0) then add_count(key, n - (old[key] or 0)) end
  end
  for key, n in pairs(old) do
    if new[key] == nil then add_count(key, -n) end
  end
  local oldw, neww = {}, {}
  local el = redis.call("HGETALL", ELIG)
  for j = 1, #el, 2 do oldw[el[j]] = el[j + 1] end
  redis.call("DEL", ELIG)
  for _, e in ipairs(elig_list) do
    neww[e[1]] = e[2]
    redis.call("HSET", ELIG, e[1], e[2])
    if oldw[e[1]] ~= e[2] then declare(e[1], oldw[e[1]], e[2]) end
  end
  for key, w in pairs(oldw) do
    if neww[key] == nil then declare(key, w, nil) end
  end
else
  for _, e in ipairs(held_list) do -- releases, never more than this owner holds
    local have = tonumber(redis.call("HGET", HELD, e[1])) or 0
    local n = math.min(have, tonumber(e[2]))
    if n > 0 then
      if have - n > 0 then redis.call("HSET", HELD, e[1], have - n) else redis.call("HDEL", HELD, e[1]) end
      add_count(e[1], -n)
    end
  end
  for _, e in ipairs(elig_list) do
    local old = redis.call("HGET", ELIG, e[1])
    if old ~= e[2] then
      redis.call("HSET", ELIG, e[1], e[2])
      declare(e[1], old, e[2])
    end
  end
  for _, e in ipairs(undeclare_list) do
    local old = redis.call("HGET", ELIG, e[1])
    if old then
      redis.call("HDEL", ELIG, e[1])
      declare(e[1], old, nil)
    end
  end
end

-- Count one connection on key for this owner and move key one pick along the WF2Q schedule.
local function count_pick(key)
  redis.call("HINCRBY", HELD, key, 1)
  local kh = khash(key)
  redis.call("HINCRBY", kh, "c", 1)
  local h = redis.call("HMGET", kh, "w", "s")
  local w = tonumber(h[1])
  if w then
    local vt = tonumber(redis.call("GET", VT)) or 0
    local nvt = vt + 1 / total
    local u = 1 / w
    local s = tonumber(h[2]) + u
    -- forget service missed or taken in advance while ratios, not ties, decided
    if s < vt then s = vt elseif s > nvt + u then s = nvt + u end
    redis.call("SET", VT, nvt)
    local ready = grid(s) <= grid(nvt)
    redis.call("HSET", kh, "s", s, "r", ready and "1" or "0")
    if ready then redis.call("ZREM", PEND, key) else redis.call("ZADD", PEND, s, key) end
  end
  requeue(key)
end

if rebuilt then return {"REBUILT", false, rebuilt} end

local picked = false
if action == "a" or action == "t" then
  local vt = tonumber(redis.call("GET", VT)) or 0
  for _, key in ipairs(redis.call("ZRANGEBYSCORE", PEND, "-inf", grid(vt) + 0.5 / GRID)) do
    redis.call("HSET", khash(key), "r", "1")
    redis.call("ZREM", PEND, key)
    requeue(key)
  end
end

if action == "a" then
  -- Walk q from the lowest score. A member whose weight here equals its wbase has its true
  -- ratio as score, a lower bound for every later member (no process declares more than
  -- wbase): the walk stops there. Members this owner may not use are skipped; members it
  -- weighs lower (slow start) are compared exactly on the way.
  local best, best_c, best_e, best_flag, best_t
  local start, batch, done = 0, 16, false
  while not done do
    local members = redis.call("ZRANGE", Q, start, start + batch - 1)
    if #members == 0 then break end
    for _, m in ipairs(members) do
      local key = string.sub(m, 10)
      local e = not excluded[key] and tonumber(redis.call("HGET", ELIG, key))
      if e then
        local h = redis.call("HMGET", khash(key), "c", "w")
        local c, w = tonumber(h[1]) or 0, tonumber(h[2])
        local flag, tt = string.sub(m, 1, 1), struct.unpack(">d", string.sub(m, 2, 9))
        local better = not best
        if not better then
          local lhs, rhs = c * best_e, best_c * e -- exact: integers below 2^53
          better = lhs < rhs or (lhs == rhs and (flag < best_flag
            or (flag == best_flag and tt < best_t)))
        end
        if better then best, best_c, best_e, best_flag, best_t = key, c, e, flag, tt end
        if not w or e >= w then done = true break end
      end
    end
    start = start + batch
    batch = batch * 2
  end
  if best then
    count_pick(best)
    picked = best
  end
elseif action == "t" then
  count_pick(ARGV[7])
  picked = ARGV[7]
end

local out = {"OK", picked}
for _, e in ipairs(count_list) do
  out[#out + 1] = tonumber(redis.call("HGET", khash(e[1]), "c")) or 0
end
return out
