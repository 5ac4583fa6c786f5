//! Which addresses a procedure may reach through a name its manifest
//! lists: global unicast only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a procedure may not reach `ip` unless its manifest lists that very
/// address; `None` for a global unicast address, which it may reach
/// through a listed name.
///
/// An IPv6 address that stands for an IPv4 one is judged as that IPv4
/// address: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
/// IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4
/// `2002:aabb:ccdd::/48`. Where the IPv4 address cannot be known, the
/// range is refused whole: Teredo `2001::/32` (the client's address is
/// obfuscated, the server's may be anything) and local-use NAT64
/// `64:ff9b:1::/48` (where the IPv4 address sits is the local translator's
/// choice, and the range is not global). Everything outside `2000::/3`,
/// IPv6's global unicast, is refused.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match ip.segments() {
        [0, 0, 0, 0, 0, 0, 0, 0] => Some("unspecified"),
        [0, 0, 0, 0, 0, 0, 0, 1] => Some("loopback"),
        // IPv4-mapped, IPv4-compatible (deprecated), IPv4-translated, and
        // NAT64's well-known prefix: the IPv4 address decides.
        [0, 0, 0, 0, 0, 0xffff, high, low]
        | [0, 0, 0, 0, 0, 0, high, low]
        | [0, 0, 0, 0, 0xffff, 0, high, low]
        | [0x64, 0xff9b, 0, 0, 0, 0, high, low] => forbidden_v4(v4(high, low)),
        [0x64, 0xff9b, 1, ..] => Some("local-use NAT64 (64:ff9b:1::/48)"),
        // 6to4: the IPv4 address is bits 16 to 48.
        [0x2002, high, low, ..] => forbidden_v4(v4(high, low)),
        [0x2001, 0, ..] => Some("Teredo (2001::/32), whose IPv4 address is hidden"),
        [0x2001, 2, 0, ..] => Some("benchmarking (2001:2::/48)"),
        [0x2001, second, ..] if second < 0x200 => Some("IETF protocol assignments (2001::/23)"),
        [0x2001, 0xdb8, ..] => Some("documentation (2001:db8::/32)"),
        [0x3fff, second, ..] if second < 0x1000 => Some("documentation (3fff::/20)"),
        [0x100, 0, 0, 0, ..] => Some("discard-only (100::/64)"),
        [first, ..] if first & 0xff00 == 0xff00 => Some("multicast"),
        [first, ..] if first & 0xffc0 == 0xfe80 => Some("link-local"),
        [first, ..] if first & 0xffc0 == 0xfec0 => Some("site-local (fec0::/10)"),
        [first, ..] if first & 0xfe00 == 0xfc00 => Some("unique local (fc00::/7)"),
        [first, ..] if first & 0xe000 != 0x2000 => Some("not global unicast (outside 2000::/3)"),
        _ => None,
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    match ip.octets() {
        [0, ..] => Some("this network (0.0.0.0/8)"),
        [10, ..] => Some("private (10.0.0.0/8)"),
        [100, 64..=127, ..] => Some("shared address space, carrier-grade NAT (100.64.0.0/10)"),
        [127, ..] => Some("loopback"),
        [169, 254, ..] => Some("link-local (169.254.0.0/16), where cloud metadata services answer"),
        [172, 16..=31, ..] => Some("private (172.16.0.0/12)"),
        [192, 0, 0, _] => Some("IETF protocol assignments (192.0.0.0/24)"),
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => Some("documentation"),
        [192, 88, 99, _] => Some("deprecated 6to4 relay anycast (192.88.99.0/24)"),
        [192, 168, ..] => Some("private (192.168.0.0/16)"),
        [198, 18..=19, ..] => Some("benchmarking (198.18.0.0/15)"),
        [224..=239, ..] => Some("multicast"),
        [255, 255, 255, 255] => Some("broadcast"),
        [240..=255, ..] => Some("reserved (240.0.0.0/4)"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form finding 9 of issue 37 names, the usual private ranges,
    /// and global addresses that must get through: (address, allowed,
    /// what the reason says when refused).
    const ADDRESSES: &[(&str, bool, &str)] = &[
        // IPv4
        ("0.0.0.0", false, "this network"),
        ("0.1.2.3", false, "this network"),
        ("10.1.2.3", false, "private"),
        ("100.64.0.1", false, "carrier-grade NAT"),
        ("100.127.255.255", false, "carrier-grade NAT"),
        ("127.0.0.1", false, "loopback"),
        ("127.255.255.254", false, "loopback"),
        ("169.254.169.254", false, "link-local"),
        ("172.16.0.1", false, "private"),
        ("172.31.255.255", false, "private"),
        ("192.0.0.1", false, "IETF protocol assignments"),
        ("192.0.0.170", false, "IETF protocol assignments"),
        ("192.0.2.1", false, "documentation"),
        ("192.88.99.1", false, "6to4 relay"),
        ("192.168.1.1", false, "private"),
        ("198.18.0.1", false, "benchmarking"),
        ("198.19.255.255", false, "benchmarking"),
        ("198.51.100.7", false, "documentation"),
        ("203.0.113.9", false, "documentation"),
        ("224.0.0.1", false, "multicast"),
        ("239.255.255.250", false, "multicast"),
        ("240.0.0.1", false, "reserved"),
        ("255.255.255.255", false, "broadcast"),
        ("8.8.8.8", true, ""),
        ("1.1.1.1", true, ""),
        ("93.184.216.34", true, ""),
        ("100.63.255.255", true, ""),
        ("100.128.0.1", true, ""),
        ("172.32.0.1", true, ""),
        ("198.20.0.1", true, ""),
        ("192.0.3.1", true, ""),
        // IPv6 of its own
        ("::", false, "unspecified"),
        ("::1", false, "loopback"),
        ("100::1", false, "discard-only"),
        ("fc00::1", false, "unique local"),
        ("fd12:3456::1", false, "unique local"),
        ("fe80::1", false, "link-local"),
        ("fec0::1", false, "site-local"),
        ("feff::1", false, "site-local"),
        ("ff02::1", false, "multicast"),
        ("ff0e::1", false, "multicast"),
        ("2001:db8::1", false, "documentation"),
        ("3fff::1", false, "documentation"),
        ("2001:2::1", false, "benchmarking"),
        ("2001:10::1", false, "IETF protocol assignments"),
        ("2001:1ff::1", false, "IETF protocol assignments"),
        ("4000::1", false, "outside 2000::/3"),
        ("5f00::1", false, "outside 2000::/3"),
        ("2606:4700::1111", true, ""),
        ("2a00:1450:4001:80b::200e", true, ""),
        ("2001:200::1", true, ""),
        // IPv4 inside IPv6: the IPv4 address decides.
        ("::ffff:127.0.0.1", false, "loopback"),
        ("::ffff:169.254.169.254", false, "link-local"),
        ("::ffff:10.0.0.1", false, "private"),
        ("::ffff:100.64.0.1", false, "carrier-grade NAT"),
        ("::ffff:8.8.8.8", true, ""),
        ("::127.0.0.1", false, "loopback"),
        ("::a9fe:a9fe", false, "link-local"),
        ("::10.0.0.1", false, "private"),
        ("::8.8.8.8", true, ""),
        ("::ffff:0:127.0.0.1", false, "loopback"),
        ("::ffff:0:a9fe:a9fe", false, "link-local"),
        ("::ffff:0:8.8.8.8", true, ""),
        ("64:ff9b::127.0.0.1", false, "loopback"),
        ("64:ff9b::a9fe:a9fe", false, "link-local"),
        ("64:ff9b::c612:1", false, "benchmarking"),
        ("64:ff9b::5db8:d822", true, ""),
        ("64:ff9b:1::a9fe:a9fe", false, "local-use NAT64"),
        ("64:ff9b:1:ffff::808:808", false, "local-use NAT64"),
        ("2002:7f00:1::1", false, "loopback"),
        ("2002:a9fe:a9fe::", false, "link-local"),
        ("2002:c000:1::1", false, "IETF protocol assignments"),
        ("2002:c0a8:101:1::1", false, "private"),
        ("2002:808:808::1", true, ""),
        ("2001::1", false, "Teredo"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false, "Teredo"),
        ("2001:0:5ef5:79fd:0:0:5ef5:79fd", false, "Teredo"),
    ];

    #[test]
    fn only_global_unicast_addresses_are_allowed_through_a_name() {
        let mut wrong = Vec::new();
        for &(address, allowed, reason) in ADDRESSES {
            let ip: IpAddr = address.parse().unwrap();
            let verdict = forbidden(ip);
            let right = match verdict {
                None => allowed,
                Some(why) => !allowed && why.contains(reason),
            };
            if !right {
                wrong.push(format!(
                    "{address}: expected {}, got {verdict:?}",
                    if allowed {
                        "allowed".into()
                    } else {
                        format!("refused ({reason})")
                    }
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
