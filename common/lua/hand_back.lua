-- A live holder gives deliveries back to the front of their lists (the
-- end consumers read next), oldest nearest the front: a warm shutdown,
-- an unload, a model it cannot serve.
--
-- KEYS[1]  the holder's deliveries;  ARGV  the tags to give back
-- Returns how many were given back (a tag no longer held is skipped).
local tags = {}
for i = 1, #ARGV do tags[i] = ARGV[i] end
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
