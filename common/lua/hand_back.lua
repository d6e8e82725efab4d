-- A live holder gives deliveries back to the front of their lists (the
-- end consumers read next), oldest nearest the front: a warm shutdown,
-- an unload, a model it cannot serve, a fetch whose answer never came.
--
-- KEYS[1]  the holder's deliveries;  KEYS[2]  its fetch floor
-- ARGV[1]  '' or a new floor: a fetch of this holder whose first tag is
--          below it takes nothing from now on (a fetch whose answer was lost
--          may reach Redis after this script, over another connection);
-- ARGV[2]  the floor's time to live (s);  ARGV[3..]  the tags to give back
-- Returns how many were given back (a tag no longer held is skipped).
if ARGV[1] ~= '' then
  local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[1]) > floor then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  end
end
local tags = {}
for i = 3, #ARGV do tags[#tags + 1] = ARGV[i] end
table.sort(tags, function(a, b) return tonumber(a) > tonumber(b) end)
local n = 0
for _, tag in ipairs(tags) do
  local value = redis.call('HGET', KEYS[1], tag)
  if value then
    local cut = string.find(value, '\n', 1, true)
    if cut then
      redis.call('RPUSH', string.sub(value, 1, cut - 1), string.sub(value, cut + 1))
    end
    redis.call('HDEL', KEYS[1], tag)
    n = n + 1
  end
end
return n
