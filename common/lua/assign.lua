-- An assigner's decisions, written only while it still holds the assign
-- lock (a fence: an assigner paused past the lock's expiry, whose view is
-- stale, writes nothing), then the lock released.
--
-- KEYS[1]  the assign lock;  KEYS[2..]  one worker placement per change
-- ARGV[1]  the lock token;  ARGV[2..]  per change, three values: the action
--          (`want` or `drop`), the model id, the task ("" = from its config)
-- Returns 1 when the changes were written, 0 when the lock was not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 3
  local action, model, task = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  if action == 'want' then
    redis.call('HSET', KEYS[i], '_present', '1', model, task)
  elseif redis.call('HEXISTS', KEYS[i], model) == 1 then
    redis.call('HDEL', KEYS[i], model)
  end
end
redis.call('DEL', KEYS[1])
return 1
