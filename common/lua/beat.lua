-- A holder's heartbeat, timed by the Redis server's clock (hosts' clocks may differ).
--
-- KEYS[1] beats (zset: holder -> last beat), KEYS[2] holders (set), KEYS[3] the holder's tombstone
-- ARGV[1] the holder
-- Returns 1, or 0 when the holder was declared dead: its deliveries went
-- back to their queues and it must not act on them any more.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(now[1]) + tonumber(now[2]) / 1000000, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
