-- Declare dead every holder whose last beat is older than ARGV[1] seconds
-- (or ARGV[5] alone, whatever its beats: a worker retiring), and give
-- everything it held back to the front of its lists, oldest nearest the
-- front. Atomic: when several processes notice the same death at the same
-- moment, exactly one hands the deliveries back.
--
-- KEYS[1] beats, KEYS[2] holders
-- ARGV[1] stale after (s); ARGV[2] deliveries key prefix; ARGV[3] tombstone key prefix;
-- ARGV[4] tombstone ttl (s); ARGV[5] a holder to retire now, or ''
-- Returns {holder, count, {job ids}, ...} for each holder handled.
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local stale = tonumber(ARGV[1])
local holders
if ARGV[5] ~= '' then
  holders = {ARGV[5]}
else
  holders = redis.call('SMEMBERS', KEYS[2])
end
local out = {}
for _, holder in ipairs(holders) do
  local last = redis.call('ZSCORE', KEYS[1], holder)
  if ARGV[5] ~= '' or (not last) or now - tonumber(last) > stale then
    local key = ARGV[2] .. holder
    local flat = redis.call('HGETALL', key)
    local tags, held = {}, {}
    for i = 1, #flat, 2 do
      tags[#tags + 1] = flat[i]
      held[flat[i]] = flat[i + 1]
    end
    table.sort(tags, function(a, b) return tonumber(a) > tonumber(b) end)
    local ids = {}
    for _, tag in ipairs(tags) do
      local value = held[tag]
      local cut = string.find(value, '\n', 1, true)
      if cut then
        local message = string.sub(value, cut + 1)
        redis.call('RPUSH', string.sub(value, 1, cut - 1), message)
        local ok, doc = pcall(cjson.decode, message)
        if ok and type(doc) == 'table' and type(doc.headers) == 'table' and type(doc.headers.id) == 'string' then
          ids[#ids + 1] = doc.headers.id
        end
      end
    end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], holder)
    redis.call('SREM', KEYS[2], holder)
    if ARGV[5] == '' then
      redis.call('SET', ARGV[3] .. holder, tostring(now), 'EX', tonumber(ARGV[4]))
    end
    out[#out + 1] = holder
    out[#out + 1] = #tags
    out[#out + 1] = ids
  end
end
return out
