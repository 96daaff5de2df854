//! Which addresses a webhook may be sent to. A customer names the URL, so
//! without a check the dispatcher would reach whatever the network it runs
//! in can: the database, the cloud's metadata service, an admin port on
//! loopback. Unless private addresses are allowed (local development), an
//! address in any of the ranges below is refused, and the check is made on
//! the addresses the connection is actually made to (see `sender.rs`), so a
//! name that resolves differently a second time gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, or `None` when a webhook may be sent to it.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16, which holds the cloud metadata services
        // (169.254.169.254, 169.254.170.2).
        Some("link-local (cloud metadata)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || ip.is_unspecified() || a == 0 {
        Some("unspecified or broadcast")
    } else if a == 100 && (64..128).contains(&b) {
        // Carrier-grade NAT (100.64.0.0/10), private in practice.
        Some("shared (carrier-grade NAT)")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else if a >= 240 {
        Some("reserved")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        // 192.0.0.0/24, IETF protocol assignments.
        Some("reserved")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // An IPv4 address inside IPv6 is judged as that IPv4 address: mapped
    // (::ffff:a.b.c.d), compatible (::a.b.c.d) or NAT64 (64:ff9b::/96).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (segments[..6] == [0; 6] && segments[6] != 0)
    {
        let [.., hi, lo] = segments;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return refused_v4(v4);
    }
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if segments[0] & 0xfe00 == 0xfc00 {
        // fc00::/7, unique local (private; AWS's metadata is fd00:ec2::254).
        Some("private (unique local)")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    fn refused(text: &str) -> bool {
        super::refused(text.parse().unwrap()).is_some()
    }

    #[test]
    fn refuses_every_internal_range() {
        for address in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.170.2",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.170",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
        ] {
            assert!(refused(address), "{address} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for address in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(address), "{address} must be allowed");
        }
    }
}
