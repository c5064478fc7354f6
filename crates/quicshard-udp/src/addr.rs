//! Socket addresses to and from the kernel's `sockaddr_in` / `sockaddr_in6`, in a
//! `sockaddr_storage` (large enough and aligned for every socket address type).

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;

/// An all-zero `sockaddr_storage` (family `AF_UNSPEC`).
pub(crate) fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is a plain C struct for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// Writes `addr` into `storage` as a `sockaddr_in` / `sockaddr_in6`; returns its length.
pub(crate) fn encode(storage: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    let p = ptr::from_mut(storage);
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for every sockaddr
            unsafe { p.cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and aligned for every sockaddr
            unsafe { p.cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote into `ss`; `None` for a family other than IPv4 and IPv6.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn decode(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is large
            // enough and suitably aligned for every socket address type.
            let sin = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for a in ["1.2.3.4:5", "[2001:db8::1]:443", "[fe80::1%2]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut ss = zeroed_storage();
            encode(&mut ss, a);
            assert_eq!(decode(&ss), Some(a));
        }
    }

    #[test]
    fn unknown_family_decodes_to_none() {
        assert_eq!(decode(&zeroed_storage()), None);
    }
}
