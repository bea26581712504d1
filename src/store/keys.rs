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
/// A bucket is one string `"<milli-tokens>:<ms>"` (integers: no float
/// parsing or formatting in Redis), written with an expiry at which it
/// would be full again, so idle keys vanish.
pub const LUA_TAKE: &str = r#"
local function take(key, rate, burst, now)
  local full = burst * 1000
  local tokens = full
  local ts = now
  local v = redis.call('GET', key)
  if v then
    local sep = string.find(v, ':', 1, true)
    if sep then
      tokens = tonumber(string.sub(v, 1, sep - 1)) or full
      ts = tonumber(string.sub(v, sep + 1)) or now
    end
  end
  if now > ts then
    -- Whole milli-tokens only; until one is earned the start stays put,
    -- so slow rates still accrue.
    local gained = math.floor((now - ts) * rate)
    if gained > 0 or tokens >= full then
      tokens = math.min(full, tokens + gained)
      ts = now
    end
  end
  if tokens >= 1000 then
    tokens = tokens - 1000
    redis.call('SET', key, string.format('%d:%d', tokens, ts), 'PX', math.ceil((full - tokens) / rate) + 1000)
    return 0
  end
  return math.max(1, math.ceil((1000 - tokens) / rate))
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
