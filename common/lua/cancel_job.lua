-- Cancel a job that has not started.
--
-- KEYS[1] the job's record; ARGV[1] time
-- Returns {status before the call, reply_to}: 'queued' means it is now
-- cancelled; '' means the job is unknown.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'', ''} end
local reply_to = redis.call('HGET', KEYS[1], 'reply_to') or ''
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
end
return {status, reply_to}
