//! The Lua scripts that make multi-key operations atomic.
//!
//! Every key a script touches belongs to one channel and carries the
//! channel's hash tag (or to one of the fixed cluster-wide routes), so
//! each script runs on one Redis (or one Redis Cluster slot). The
//! heartbeat's batches ([`refresh_presence`], [`expire_presence_of`]) take
//! the keys of many channels, and are given only channels that live on
//! the same Redis (on a Redis Cluster, one channel each).

use redis::Script;

/// The Lua prelude that reads the server's clock into `now_ms`: every
/// node's expiries are judged by the one clock of the Redis that holds them.
macro_rules! now_ms {
    () => {
        "\nlocal now = redis.call('time')\nlocal now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)"
    };
}

/// Lua, after `epoch` was read from `meta`: a stream last written under
/// another generation (behind Sentinel, another master's run id) is
/// dropped, so it starts again under a new epoch. Redis replicates
/// asynchronously: the replica promoted by a failover may lack the last
/// publications of the old master, which subscribers may have seen. Its
/// stream would hand out their offsets again to other publications, and a
/// client recovering from one of them would silently miss those. A new
/// epoch makes every such client learn `recovered: false` instead. An
/// empty generation (no Sentinel) never resets.
macro_rules! reset_on_new_generation {
    () => {
        r#"
if epoch and generation ~= '' and redis.call('hget', meta, 'gen') ~= generation then
  redis.call('del', meta, history)
  epoch = nil
end"#
    };
}

/// Publish: idempotency check, offset assignment, history append and trim,
/// expiry, and the broadcast, as one step. Offset order is therefore
/// delivery order on every node.
///
/// KEYS: meta, history, idempotency (may be unused)
/// ARGV: body, history size (0 = no history), history ttl ms, meta ttl ms,
///       idempotency ttl ms (0 = none), pub/sub channel, epoch candidate,
///       publish command (`publish`, or `spublish` on a Redis Cluster),
///       generation (see `reset_on_new_generation!`)
/// Returns: {duplicate (0/1), "offset\nepoch"}
pub(crate) fn publish() -> Script {
    Script::new(concat!(
        r#"
local meta, history, idempotency = KEYS[1], KEYS[2], KEYS[3]
local body, size = ARGV[1], tonumber(ARGV[2])
local history_ttl, meta_ttl, idempotency_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local channel, candidate, publish, generation = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if idempotency_ttl > 0 then
  local earlier = redis.call('get', idempotency)
  if earlier then return {1, earlier} end
end
local offset, epoch = 0, ''
if size > 0 then
  epoch = redis.call('hget', meta, 'epoch')"#,
        reset_on_new_generation!(),
        r#"
  if not epoch then
    epoch = candidate
    redis.call('hset', meta, 'epoch', epoch, 'gen', generation)
  end
  offset = redis.call('hincrby', meta, 'top', 1)
  local message = offset .. '\n' .. epoch .. '\n' .. body
  redis.call('rpush', history, message)
  redis.call('ltrim', history, -size, -1)
  redis.call('pexpire', history, history_ttl)
  redis.call('pexpire', meta, meta_ttl)
  redis.call(publish, channel, message)
else
  redis.call(publish, channel, '0\n\n' .. body)
end
local result = offset .. '\n' .. epoch
if idempotency_ttl > 0 then
  redis.call('set', idempotency, result, 'PX', idempotency_ttl)
end
return {0, result}
"#,
    ))
}

/// Read a channel's stream: its position (creating the stream if it has
/// none) and, of the publications history still holds, the newest ones
/// the read can use, oldest first. Offsets in the list run one by one up
/// to the top, so those after offset `after` are its newest `top - after`.
///
/// KEYS: meta, history
/// ARGV: meta ttl ms, epoch candidate, generation (see
///       `reset_on_new_generation!`), after (an offset; -1 for none),
///       newest (how many at most; -1 for no bound)
/// Returns: {top, epoch, {messages…}}
pub(crate) fn history() -> Script {
    Script::new(concat!(
        r#"
local meta, history = KEYS[1], KEYS[2]
local generation = ARGV[3]
local epoch = redis.call('hget', meta, 'epoch')"#,
        reset_on_new_generation!(),
        r#"
if not epoch then
  epoch = ARGV[2]
  redis.call('hset', meta, 'epoch', epoch, 'top', 0, 'gen', generation)
  redis.call('pexpire', meta, tonumber(ARGV[1]))
end
local top = tonumber(redis.call('hget', meta, 'top') or '0')
local after, want = tonumber(ARGV[4]), tonumber(ARGV[5])
local kept = redis.call('llen', history)
if want < 0 or want > kept then want = kept end
if after >= 0 then
  local newer = top - after
  if newer < 0 then newer = 0 end
  if newer < want then want = newer end
end
if want <= 0 then return {top, epoch, {}} end
return {top, epoch, redis.call('lrange', history, -want, -1)}
"#,
    ))
}

/// Adds or refreshes a presence entry until now + ttl, counting entries
/// per user.
///
/// KEYS: presence hash, presence expiry sorted set, per-user entry counts
/// ARGV: client id, info JSON, ttl ms, user id
/// Returns: 1 when the entry is new and its user's first (or the
/// anonymous user's, whose entries each arrive on their own), else 0
pub(crate) fn add_presence() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local entries, expiries, users = KEYS[1], KEYS[2], KEYS[3]
local ttl = tonumber(ARGV[3])
local arrived = 0
if redis.call('hset', entries, ARGV[1], ARGV[2]) == 1 then
  if redis.call('hincrby', users, ARGV[4], 1) == 1 or ARGV[4] == '' then arrived = 1 end
end
redis.call('zadd', expiries, now_ms + ttl, ARGV[1])
for _, key in ipairs(KEYS) do redis.call('pexpire', key, ttl) end
return arrived
"#
    ))
}

/// Refreshes many presence entries of many channels until now + ttl, as
/// [`add_presence`] each (an entry that expired meanwhile comes back and
/// counts for its user again), without telling arrivals.
///
/// KEYS: per channel, its presence hash, expiry sorted set and per-user
/// entry counts
/// ARGV: ttl ms; then per channel, in KEYS' order, its number of entries
/// and that many (client id, info JSON, user id)
pub(crate) fn refresh_presence() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local ttl = tonumber(ARGV[1])
local until_ms = now_ms + ttl
local at = 2
for k = 1, #KEYS, 3 do
  local entries, expiries, users = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local count = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, count do
    if redis.call('hset', entries, ARGV[at], ARGV[at + 1]) == 1 then
      redis.call('hincrby', users, ARGV[at + 2], 1)
    end
    redis.call('zadd', expiries, until_ms, ARGV[at])
    at = at + 3
  end
  redis.call('pexpire', entries, ttl)
  redis.call('pexpire', expiries, ttl)
  redis.call('pexpire', users, ttl)
end
return 0
"#
    ))
}

/// Sweeps the expired presence entries of one or many channels, handing
/// each out once (a sweep of one channel is a batch of one).
///
/// KEYS: per channel, its presence hash, expiry sorted set and per-user
/// entry counts
/// Returns: per expired entry, the channel's place in KEYS' order (from
/// 0), its info JSON, and '1' when it was its user's last entry (or the
/// anonymous user's), else '0'
pub(crate) fn expire_presence_of() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local out = {}
for k = 1, #KEYS, 3 do
  local entries, expiries, users = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local expired = redis.call('zrangebyscore', expiries, '-inf', now_ms)
  for _, client in ipairs(expired) do
    redis.call('zrem', expiries, client)
    local info = redis.call('hget', entries, client)
    if info then
      redis.call('hdel', entries, client)
      local user = tostring(cjson.decode(info).user)
      local last = '0'
      if redis.call('hincrby', users, user, -1) <= 0 then
        redis.call('hdel', users, user)
        last = '1'
      elseif user == '' then
        last = '1'
      end
      table.insert(out, tostring((k - 1) / 3))
      table.insert(out, info)
      table.insert(out, last)
    end
  end
end
return out
"#
    ))
}

/// Removes a presence entry.
///
/// KEYS: presence hash, presence expiry sorted set, per-user entry counts
/// ARGV: client id, user id
/// Returns: 1 when the entry existed and was its user's last (or the
/// anonymous user's), else 0
pub(crate) fn remove_presence() -> Script {
    Script::new(
        r#"
local entries, expiries, users = KEYS[1], KEYS[2], KEYS[3]
redis.call('zrem', expiries, ARGV[1])
if redis.call('hdel', entries, ARGV[1]) == 0 then return 0 end
if redis.call('hincrby', users, ARGV[2], -1) <= 0 then
  redis.call('hdel', users, ARGV[2])
  return 1
end
if ARGV[2] == '' then return 1 end
return 0
"#,
    )
}

/// Adds or refreshes an entry of an expiring registry (the node registry)
/// until now + ttl.
///
/// KEYS: entries hash, expiry sorted set
/// ARGV: id, info JSON, ttl ms
pub(crate) fn add_expiring() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local entries, expiries = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[3])
redis.call('hset', entries, ARGV[1], ARGV[2])
redis.call('zadd', expiries, now_ms + ttl, ARGV[1])
redis.call('pexpire', entries, ttl)
redis.call('pexpire', expiries, ttl)
return 1
"#
    ))
}

/// Sets (or refreshes) a node's entry in a channel's occupancy until now +
/// ttl, after sweeping expired entries (of dead nodes).
///
/// KEYS: occupancy hash (node -> subscribers), occupancy expiry sorted set
/// ARGV: node id, subscribers, ttl ms
/// Returns: 1 when the channel had no live entry before (it became occupied), else 0
pub(crate) fn occupy() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local entries, expiries = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[3])
for _, node in ipairs(redis.call('zrangebyscore', expiries, '-inf', now_ms)) do
  redis.call('zrem', expiries, node)
  redis.call('hdel', entries, node)
end
local first = redis.call('hlen', entries) == 0
redis.call('hset', entries, ARGV[1], ARGV[2])
redis.call('zadd', expiries, now_ms + ttl, ARGV[1])
redis.call('pexpire', entries, ttl)
redis.call('pexpire', expiries, ttl)
if first then return 1 end
return 0
"#
    ))
}

/// Removes a node's entry from a channel's occupancy, then sweeps expired
/// entries.
///
/// KEYS: occupancy hash, occupancy expiry sorted set
/// ARGV: node id
/// Returns: 1 when the entry existed and no live entry is left (the
/// channel was vacated), else 0
pub(crate) fn vacate() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local entries, expiries = KEYS[1], KEYS[2]
redis.call('zrem', expiries, ARGV[1])
local removed = redis.call('hdel', entries, ARGV[1])
for _, node in ipairs(redis.call('zrangebyscore', expiries, '-inf', now_ms)) do
  redis.call('zrem', expiries, node)
  redis.call('hdel', entries, node)
end
if removed == 1 and redis.call('hlen', entries) == 0 then return 1 end
return 0
"#
    ))
}

/// The entries of an expiring hash that are not past their expiry, with
/// their ids.
///
/// KEYS: entries hash, expiry sorted set
/// Returns: {id, value, id, value, …}
pub(crate) fn live_entries() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local entries, expiries = KEYS[1], KEYS[2]
local live = redis.call('zrangebyscore', expiries, '(' .. now_ms, '+inf')
local out = {}
for _, id in ipairs(live) do
  local value = redis.call('hget', entries, id)
  if value then
    table.insert(out, id)
    table.insert(out, value)
  end
end
return out
"#
    ))
}

/// Adds (or refreshes) a member of an expiring sorted set (score: expiry
/// ms) until now + ttl.
///
/// KEYS: sorted set
/// ARGV: member, ttl ms
pub(crate) fn add_member() -> Script {
    Script::new(concat!(now_ms!(), "\nreturn redis.call('zadd', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])\n"))
}

/// The members of an expiring sorted set (score: expiry ms) not past
/// their expiry.
///
/// KEYS: sorted set
/// Returns: {member…}
pub(crate) fn live_members() -> Script {
    Script::new(concat!(now_ms!(), "\nreturn redis.call('zrangebyscore', KEYS[1], '(' .. now_ms, '+inf')\n"))
}

/// Removes the members of an expiring sorted set that are past their
/// expiry and returns them, so each goes to exactly one caller.
///
/// KEYS: sorted set
/// Returns: {member…}
pub(crate) fn expire_members() -> Script {
    Script::new(concat!(
        now_ms!(),
        r#"
local expired = redis.call('zrangebyscore', KEYS[1], '-inf', now_ms)
for _, member in ipairs(expired) do redis.call('zrem', KEYS[1], member) end
return expired
"#
    ))
}
