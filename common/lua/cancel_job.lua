-- Cancel a job that has not started: its record says cancelled and its
-- result is stored as Celery stores a revoked task, published so a request
-- waiting on it (in any webapp process) answers at once. One script: a
-- cancelled job always has its result.
--
-- KEYS[1] the job's record; KEYS[2] its result key (celery-task-meta-<id>)
-- ARGV[1] time; ARGV[2] the revoked result document; ARGV[3] result ttl (s)
-- Returns the job's status before the call: 'queued' means it is now
-- cancelled; '' means the job is unknown; 'finished' that a result was stored.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status ~= 'queued' then return status end
if not redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]), 'NX') then
  return 'finished'  -- a result is stored already
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
local reply_to = redis.call('HGET', KEYS[1], 'reply_to')
if reply_to then redis.call('PUBLISH', reply_to, ARGV[2]) end
return status
