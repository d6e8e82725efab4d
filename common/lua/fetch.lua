-- Take job messages from queues into one holder's deliveries, atomically:
-- a message is in its queue or held, never in neither (kombu's BRPOP and
-- its separate unacked write leave a gap where a killed worker loses it).
--
-- KEYS[1]   the holder's deliveries (hash: tag -> list key .. "\n" .. message)
-- KEYS[2..] the lists to take from: PER consecutive keys per queue, in
--           the order kombu's Redis transport reads them (priority lists)
-- ARGV[1]   the first tag to give; ARGV[2] PER; ARGV[3..] messages wanted per queue;
--           then the holder's tombstone key, its fetch floor key (hand_back.lua),
--           and optionally the most messages to take in all (queues in their order)
-- Returns {tag, list, message, tag, list, message, ...}, oldest first; nothing
-- when the holder was declared dead (a fetch sent before its link was cut
-- and received after the reaper ran would fill a hash nobody reaps again),
-- or when the holder gave up waiting for this fetch's answer (its first tag
-- is below the floor): what it took would sit where no one looks.
local tag = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local out = {}
local tombstone = ARGV[3 + (#KEYS - 1) / per]
if tombstone and tombstone ~= '' and redis.call('EXISTS', tombstone) == 1 then
  return out
end
local floor = ARGV[4 + (#KEYS - 1) / per]
if floor and floor ~= '' and tag < tonumber(redis.call('GET', floor) or '0') then
  return out
end
local total = tonumber(ARGV[5 + (#KEYS - 1) / per] or '')
local queue = 0
for first = 2, #KEYS, per do
  queue = queue + 1
  local want = tonumber(ARGV[2 + queue])
  if total then
    want = math.min(want, total - math.floor(#out / 3))
  end
  for i = first, first + per - 1 do
    if want <= 0 then break end
    local got = redis.call('RPOP', KEYS[i], want)
    if got then
      for _, message in ipairs(got) do
        redis.call('HSET', KEYS[1], tostring(tag), KEYS[i] .. '\n' .. message)
        out[#out + 1] = tostring(tag)
        out[#out + 1] = KEYS[i]
        out[#out + 1] = message
        tag = tag + 1
        want = want - 1
      end
    end
  end
end
return out
