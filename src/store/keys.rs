//! Key names of the shared state. Every key of a tenant carries the tenant
//! as a hash tag (`atb:{acme}:…`), so on a Redis Cluster a tenant's keys
//! share one slot and one script can touch them all. Tenant ids are
//! validated (`a-z 0-9 - _ .`), so they cannot break out of the tag.

/// A tenant's key: `atb:{tenant}:<kind>:<rest>`.
pub fn tenant_key(tenant: &str, kind: &str, rest: &str) -> String {
    let mut k = String::with_capacity(8 + tenant.len() + kind.len() + rest.len());
    k.push_str("atb:{");
    k.push_str(tenant);
    k.push_str("}:");
    k.push_str(kind);
    if !rest.is_empty() {
        k.push(':');
        k.push_str(rest);
    }
    k
}

/// Bumped on every revocation so replicas know to re-read the sets.
pub const REVOCATIONS_VERSION: &str = "atb:revocations:version";

/// The token bucket as a Lua function, shared by the scripts that limit
/// rates (broker and AgentAuth). `take(key, rate, burst, now_ms)` returns
/// 0 when a token was taken, else the milliseconds until one is available.
/// Buckets expire once they would be full again, so idle keys vanish.
pub const LUA_TAKE: &str = r#"
local function take(key, rate, burst, now)
  local b = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(b[1])
  local ts = tonumber(b[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
    ts = now
  end
  if tokens >= 1 then
    tokens = tokens - 1
    redis.call('HSET', key, 't', tostring(tokens), 'ts', ts)
    redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
    return 0
  end
  return math.max(1, math.ceil((1 - tokens) * 1000 / rate))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_keys_carry_the_tenant_as_hash_tag() {
        assert_eq!(tenant_key("acme", "jti", "abc"), "atb:{acme}:jti:abc");
        assert_eq!(tenant_key("acme", "rl", ""), "atb:{acme}:rl");
        // A jti with braces cannot move the key to another slot: the tag
        // is the first {...}.
        assert!(tenant_key("acme", "jti", "{globex}").starts_with("atb:{acme}:"));
    }
}
