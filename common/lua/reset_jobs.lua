-- After a holder was declared dead: the jobs it was running are queued
-- again (their messages are back in their queues), unless another worker
-- has started them since.
--
-- KEYS  the jobs' records;  ARGV[1] the dead holder
-- Returns how many records were reset.
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'running' and redis.call('HGET', key, 'holder') == ARGV[1] then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'started_at')
    n = n + 1
  end
end
return n
