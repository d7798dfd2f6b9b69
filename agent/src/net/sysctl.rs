//! Forwarding sysctls of the agent's network namespace. `/proc/sys/net`
//! shows the namespace of the calling thread, which for the agent is the
//! namespace it was started in (no runtime thread ever joins another one);
//! this is only called when the agent runs the bridge pod network.

use super::NetError;

/// The files written, in order.
pub const FORWARDING: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

/// Turn on IPv4 and IPv6 forwarding (a no-op where already on).
pub fn enable_forwarding() -> Result<(), NetError> {
    for path in FORWARDING {
        let current = std::fs::read_to_string(path).unwrap_or_default();
        if current.trim() == "1" {
            continue;
        }
        std::fs::write(path, "1").map_err(|e| NetError::Io(path.to_string(), e))?;
    }
    Ok(())
}
