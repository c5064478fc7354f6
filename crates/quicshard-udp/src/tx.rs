//! The shard transmit path's `sendmmsg(2)`: one call for a batch of datagrams and GSO batches to
//! many destinations.
//!
//! Each message carries the control messages quinn-udp puts on its own `sendmsg`: the ECN
//! codepoint (`IP_TOS` for IPv4 and IPv4-mapped destinations, `IPV6_TCLASS` otherwise; Not-ECT
//! when there is none), when the transmit names one, the source address (`IP_PKTINFO` /
//! `IPV6_PKTINFO`), and for a GSO batch its segment size (`UDP_SEGMENT`).
//!
//! [`MmsgBufs`] is allocated once per socket and reused: headers, iovecs, addresses and control
//! buffers for [`TX_BATCH`] messages, so sending a batch allocates nothing.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::ptr;

use crate::addr;

/// Messages per `sendmmsg` call (and the capacity of a socket's transmit queue). Why: 64 single
/// datagrams cover one loop iteration of small responses to 64 connections in one syscall, while
/// the queue's worst-case memory (64 GSO batches) stays a few MiB per socket; the kernel allows
/// up to `UIO_MAXIOV` (1024).
pub const TX_BATCH: usize = 64;

/// Bytes of control buffer per message: one int-sized TOS/TCLASS message, one `in6_pktinfo` (the
/// larger pktinfo) and one `u16` segment size with their headers and alignment, 88 bytes on
/// 64-bit Linux, rounded up.
const CTRL_LEN: usize = 128;

/// One datagram for [`MmsgBufs::send`].
pub struct OutMsg<'a> {
    /// Where the datagram goes.
    pub destination: SocketAddr,
    /// ECN codepoint bits (0: Not-ECT).
    pub ecn: u8,
    /// The source address to send from (`IP_PKTINFO` / `IPV6_PKTINFO`); `None`: the kernel's
    /// choice.
    pub src_ip: Option<IpAddr>,
    /// `Some` for a GSO batch: the size of each segment but the last.
    pub segment_size: Option<u16>,
    /// The datagram, or for a GSO batch its segments back to back.
    pub contents: &'a [u8],
}

/// A control buffer, aligned for `cmsghdr` (whose largest field is a `size_t`).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Ctrl([u8; CTRL_LEN]);

/// Preallocated `sendmmsg` arguments for [`TX_BATCH`] messages.
pub struct MmsgBufs {
    hdrs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    ctrls: Box<[Ctrl]>,
}

// SAFETY: the raw pointers inside `hdrs` and `iovs` are scratch values. `send` rewrites every one
// it hands to the kernel right before the call, Rust code never dereferences them, and no pointer
// is relied upon after `send` returns, so moving the buffers to another thread is harmless.
unsafe impl Send for MmsgBufs {}

impl Default for MmsgBufs {
    fn default() -> Self {
        Self::new()
    }
}

impl MmsgBufs {
    /// Buffers for [`TX_BATCH`] messages (the only allocation: a few KiB, once per socket).
    pub fn new() -> Self {
        // SAFETY: these are plain C structs (integers, arrays and raw pointers) for which the
        // all-zero bit pattern is a valid value (null pointers, zero lengths, AF_UNSPEC).
        let (hdr, iov, name) = unsafe {
            (
                std::mem::zeroed::<libc::mmsghdr>(),
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::sockaddr_storage>(),
            )
        };
        Self {
            hdrs: vec![hdr; TX_BATCH].into_boxed_slice(),
            iovs: vec![iov; TX_BATCH].into_boxed_slice(),
            names: vec![name; TX_BATCH].into_boxed_slice(),
            ctrls: vec![Ctrl([0; CTRL_LEN]); TX_BATCH].into_boxed_slice(),
        }
    }

    /// Sends up to [`TX_BATCH`] of `msgs` with one `sendmmsg` on `fd` (retried on `EINTR`).
    ///
    /// Returns how many leading messages the kernel took (at least 1). If the first message
    /// fails, returns its error: `WouldBlock` when the socket buffer is full, otherwise the
    /// error of that one message (the caller decides whether to drop it and go on).
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        msgs: impl IntoIterator<Item = OutMsg<'a>>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (i, m) in msgs.into_iter().take(TX_BATCH).enumerate() {
            let name = &mut self.names[i];
            let namelen = addr::encode(name, m.destination);
            self.iovs[i] = libc::iovec {
                iov_base: m.contents.as_ptr().cast_mut().cast(),
                iov_len: m.contents.len(),
            };
            let ctrl = &mut self.ctrls[i];
            ctrl.0.fill(0);
            let ctrl_len = encode_cmsgs(ctrl, &m);
            let hdr = &mut self.hdrs[i];
            hdr.msg_len = 0;
            let h = &mut hdr.msg_hdr;
            h.msg_name = ptr::from_mut(name).cast();
            h.msg_namelen = namelen;
            h.msg_iov = ptr::from_mut(&mut self.iovs[i]);
            h.msg_iovlen = 1;
            h.msg_control = ctrl.0.as_mut_ptr().cast();
            h.msg_controllen = ctrl_len as _;
            h.msg_flags = 0;
            n = i + 1;
        }
        if n == 0 {
            return Ok(0);
        }
        loop {
            // SAFETY: the first `n` headers were filled above: each points at its own address,
            // iovec and control buffer (owned by `self`, alive and not moved during the call) and
            // its iovec at contents borrowed for `'a`, which outlives this call. The kernel only
            // reads those buffers and writes each header's `msg_len`.
            let rc = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
            match rc {
                rc if rc > 0 => return Ok(rc as usize),
                0 => return Err(io::ErrorKind::WouldBlock.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Encodes `m`'s ECN, source-address and segment-size control messages into `ctrl` (zeroed by the
/// caller); returns the bytes used, the message's `msg_controllen`.
fn encode_cmsgs(ctrl: &mut Ctrl, m: &OutMsg<'_>) -> usize {
    let mut enc = CmsgWriter { ctrl, len: 0 };
    let ecn = libc::c_int::from(m.ecn);
    let is_ipv4 = match m.destination.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    if is_ipv4 {
        enc.push(libc::IPPROTO_IP, libc::IP_TOS, ecn);
    } else {
        enc.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, ecn);
    }
    match m.src_ip {
        Some(IpAddr::V4(v4)) => enc.push(
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            },
        ),
        Some(IpAddr::V6(v6)) => enc.push(
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                ipi6_ifindex: 0,
            },
        ),
        None => {}
    }
    if let Some(size) = m.segment_size {
        enc.push(libc::SOL_UDP, libc::UDP_SEGMENT, size);
    }
    enc.len
}

/// Appends control messages to one [`Ctrl`] buffer, each at a `CMSG_SPACE`-aligned offset.
struct CmsgWriter<'a> {
    ctrl: &'a mut Ctrl,
    len: usize,
}

impl CmsgWriter<'_> {
    fn push<T: Copy>(&mut self, level: libc::c_int, ty: libc::c_int, value: T) {
        let data_len = size_of::<T>() as libc::c_uint;
        // SAFETY: CMSG_SPACE / CMSG_LEN are pure arithmetic on the length
        let (space, len) = unsafe { (libc::CMSG_SPACE(data_len), libc::CMSG_LEN(data_len)) };
        let space = space as usize;
        assert!(
            self.len + space <= CTRL_LEN,
            "control buffer too small: CTRL_LEN"
        );
        // SAFETY: `self.len` is a multiple of CMSG_SPACE alignment (a sum of CMSG_SPACE values)
        // from an 8-aligned buffer, so `cmsg` is aligned for `cmsghdr`; the assertion above keeps
        // the header and its data (CMSG_LEN <= CMSG_SPACE bytes) inside the buffer. The data is
        // written unaligned, as its alignment is only guaranteed for `cmsghdr`.
        unsafe {
            let cmsg = self
                .ctrl
                .0
                .as_mut_ptr()
                .add(self.len)
                .cast::<libc::cmsghdr>();
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = ty;
            (*cmsg).cmsg_len = len as _;
            libc::CMSG_DATA(cmsg).cast::<T>().write_unaligned(value);
        }
        self.len += space;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn msg<'a>(to: SocketAddr, ecn: u8, src: Option<IpAddr>, data: &'a [u8]) -> OutMsg<'a> {
        OutMsg {
            destination: to,
            ecn,
            src_ip: src,
            segment_size: None,
            contents: data,
        }
    }

    #[test]
    fn one_call_reaches_many_destinations() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<UdpSocket> = (0..5)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let mut bufs = MmsgBufs::new();
        let src = Some("127.0.0.1".parse().unwrap());
        let msgs = rx.iter().zip(&payloads).enumerate().map(|(i, (r, p))| {
            let src = if i % 2 == 0 { src } else { None };
            msg(r.local_addr().unwrap(), 0b10, src, p)
        });
        assert_eq!(bufs.send(tx.as_raw_fd(), msgs).unwrap(), 5);
        for (r, p) in rx.iter().zip(&payloads) {
            r.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 512];
            let (n, from) = r.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..]);
            assert_eq!(from, tx.local_addr().unwrap());
        }
    }

    #[test]
    fn ipv6_and_empty_batches() {
        let Ok(tx) = UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        let rx = UdpSocket::bind("[::1]:0").unwrap();
        let mut bufs = MmsgBufs::new();
        assert_eq!(bufs.send(tx.as_raw_fd(), std::iter::empty()).unwrap(), 0);
        let to = rx.local_addr().unwrap();
        let src = Some("::1".parse().unwrap());
        let msgs = [msg(to, 0b01, src, b"one"), msg(to, 0, None, b"two")];
        assert_eq!(bufs.send(tx.as_raw_fd(), msgs).unwrap(), 2);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"two"] {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }

    #[test]
    fn first_message_error_is_returned() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut bufs = MmsgBufs::new();
        // an IPv6 destination on an IPv4 socket fails for that message
        let to: SocketAddr = "[::1]:9".parse().unwrap();
        let err = bufs
            .send(tx.as_raw_fd(), [msg(to, 0, None, b"x")])
            .unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
