-- Mark jobs started, just before their batch runs, and count their starts.
--
-- KEYS   the jobs' records (atf:job:<id>)
-- ARGV[1] time; ARGV[2] the holder starting them; ARGV[3] MAX_DELIVERIES; ARGV[4] record ttl (s);
-- ARGV[5] '1' when the batch holds these jobs alone (one job), else '0';
-- ARGV[5 + i] the tombstone key of the holder that fetched job i ('' when it
--   is not held through common/deliveries.py)
-- Returns {verdicts, enqueue times}: per job its record's created_at ('' without one), and its verdict:
--   1  run it (it is started now)
--   3  run it (it is started now, alone, again: a worker died running it before)
--   2  not started: it was started before and never finished (a worker
--      died running it, maybe of it), so it runs in a batch of its own,
--      where it cannot take other jobs down with it (ask again with ARGV[5] = '1')
--   0  cancelled before it started: do not run
--  -1  a result is stored already (another worker finished it): do not run
--  -2  started MAX_DELIVERIES times without finishing: it kills workers; fail it
--  -3  the holder was declared dead (its link was cut, it was paused): its
--      jobs are back in their queues and it starts none of them any more
-- A job without a record (sent by a plain Celery client) gets one.
local out = {}
local created = {}
for i, key in ipairs(KEYS) do
  created[i] = redis.call('HGET', key, 'created_at') or ''
  local status = redis.call('HGET', key, 'status')
  local tombstone = ARGV[5 + i] or ''
  if tombstone ~= '' and redis.call('EXISTS', tombstone) == 1 then
    out[i] = -3
  elseif status == 'cancelled' then
    out[i] = 0
  elseif status == 'succeeded' or status == 'failed' then
    out[i] = -1
  else
    local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0') or 0
    if attempts >= tonumber(ARGV[3]) then
      out[i] = -2
    elseif attempts > 0 and ARGV[5] ~= '1' then
      out[i] = 2
    else
      redis.call('HSET', key, 'status', 'running', 'started_at', ARGV[1], 'holder', ARGV[2],
                 'attempts', attempts + 1)
      if redis.call('TTL', key) < 0 then
        redis.call('EXPIRE', key, tonumber(ARGV[4]))
      end
      if attempts > 0 then out[i] = 3 else out[i] = 1 end
    end
  end
end
return {out, created}
