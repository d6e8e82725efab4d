-- Store finished jobs' results, first result wins; write cache entries;
-- acknowledge the jobs' deliveries. One call per finished batch.
--
-- ARGV[1] result ttl (s); ARGV[2] finished_at; ARGV[3] J, the number of jobs; then per job 7 values:
--   result key (Celery's celery-task-meta-<id>), result document, record key, status,
--   reply channel ('' for none), reply document, the tombstone key of the holder that ran it
--   ('' for no fence)
-- then: cache ttl, C, C pairs of (cache key, output)
-- then: the holder's deliveries key ('' when acks go elsewhere), T, T tags
-- Returns per job 1 (stored), 0 (a result was stored before: this late
-- one is dropped, and the job's record is left as the first result set it)
-- or -1 (its holder was declared dead meanwhile and its job given back to
-- the queue: the result is dropped, the job runs again elsewhere and only
-- that run's result counts — a worker cut off the network stores nothing late).
local ttl = tonumber(ARGV[1])
local jobs = tonumber(ARGV[3])
local out = {}
local i = 4
for j = 1, jobs do
  local result_key, meta, record, status, channel, reply, fence =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  if fence ~= '' and redis.call('EXISTS', fence) == 1 then
    out[j] = -1
  elseif redis.call('SET', result_key, meta, 'EX', ttl, 'NX') then
    redis.call('PUBLISH', result_key, meta)
    if channel ~= '' then redis.call('PUBLISH', channel, reply) end
    redis.call('HSET', record, 'status', status, 'finished_at', ARGV[2])
    redis.call('EXPIRE', record, ttl)
    out[j] = 1
  else
    out[j] = 0
  end
end
local cache_ttl = tonumber(ARGV[i])
local entries = tonumber(ARGV[i + 1])
i = i + 2
for _ = 1, entries do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', cache_ttl)
  i = i + 2
end
local deliveries = ARGV[i]
local tags = tonumber(ARGV[i + 1])
i = i + 2
if deliveries ~= '' then
  for t = i, i + tags - 1 do
    redis.call('HDEL', deliveries, ARGV[t])
  end
end
return out
