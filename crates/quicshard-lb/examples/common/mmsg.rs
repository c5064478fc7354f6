//! Minimal `recvmmsg`/`sendmmsg` for the benchmark examples (IPv4 only, Linux only). Written
//! independently of the load balancer's own batching code so the baseline relay shares nothing
//! with what it is compared against.

#![allow(unsafe_code, dead_code)]

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Preallocated buffers and headers for batches of up to `n` datagrams of up to `len` bytes.
pub(crate) struct Mmsg {
    pub(crate) bufs: Vec<Vec<u8>>,
    pub(crate) lens: Vec<usize>,
    pub(crate) addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

fn sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

pub(crate) fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

impl Mmsg {
    pub(crate) fn new(n: usize, len: usize) -> Self {
        Self {
            bufs: vec![vec![0u8; len]; n],
            lens: vec![0; n],
            // SAFETY: plain data, zero is valid.
            addrs: vec![unsafe { std::mem::zeroed() }; n],
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
        }
    }

    fn link(&mut self, n: usize, names: bool, for_recv: bool) {
        self.iovs.clear();
        self.hdrs.clear();
        for i in 0..n {
            self.iovs.push(libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: if for_recv {
                    self.bufs[i].len()
                } else {
                    self.lens[i]
                },
            });
        }
        for i in 0..n {
            // SAFETY: plain data, zero is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if names {
                h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            }
            self.hdrs.push(h);
        }
    }

    /// Receives up to `bufs.len()` datagrams (blocking for the first, up to the socket's read
    /// timeout); fills `lens` and `addrs`; returns how many.
    pub(crate) fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.bufs.len();
        self.link(n, true, true);
        // SAFETY: every header points at a live buffer and address of this struct, which
        // outlive the call.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..r as usize {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(r as usize)
    }

    /// Sends datagrams `0..n` (`lens[i]` bytes of `bufs[i]`) to `addrs[i]`, or on a connected
    /// socket when `to` is false. Returns how many the kernel took (a partial batch is retried
    /// until an error).
    pub(crate) fn send(&mut self, sock: &UdpSocket, n: usize, to: bool) -> usize {
        self.link(n, to, false);
        let mut done = 0;
        while done < n {
            // SAFETY: as in `recv`; the kernel only reads.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as u32,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            done += r as usize;
        }
        done
    }

    pub(crate) fn set_dest(&mut self, i: usize, a: &SocketAddrV4) {
        self.addrs[i] = sockaddr(a);
    }
}
