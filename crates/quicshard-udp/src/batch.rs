//! The load balancer's batched I/O: `recvmmsg(2)` into caller buffers and `sendmmsg(2)` of
//! plain datagrams, no control messages.
//!
//! [`BatchIo`] keeps its scratch arrays between calls so the hot path does not allocate; it
//! holds raw pointers only during a call. Linux only (`recvmmsg` since 2.6.33, `sendmmsg` since
//! 3.0); other targets get a loop of `recv_from`/`send_to` with the same signatures.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// A UDP socket [`BatchIo::send`] can write to: std's (listen, DSR) or mio's (proxy sessions).
#[cfg(target_os = "linux")]
pub trait SendSocket: std::os::fd::AsRawFd {}
#[cfg(target_os = "linux")]
impl<T: std::os::fd::AsRawFd> SendSocket for T {}

/// A UDP socket [`BatchIo::send`] can write to (portable fallback: one `send_to` each).
#[cfg(not(target_os = "linux"))]
pub trait SendSocket {
    /// Sends one datagram to `to`.
    fn send_one(&self, data: &[u8], to: SocketAddr) -> io::Result<usize>;
}
#[cfg(not(target_os = "linux"))]
impl SendSocket for UdpSocket {
    fn send_one(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.send_to(data, to)
    }
}
#[cfg(not(target_os = "linux"))]
impl SendSocket for mio::net::UdpSocket {
    fn send_one(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.send_to(data, to)
    }
}

/// One datagram read by [`BatchIo::recv`].
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The sender; `None` if the kernel reported an address family we do not handle (the
    /// entry is still there, so entry `i` always describes buffer `i`).
    pub from: Option<SocketAddr>,
    /// The datagram was longer than the buffer and was cut.
    pub truncated: bool,
}

/// Reusable scratch space for batched socket calls.
#[cfg(target_os = "linux")]
pub struct BatchIo {
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovs` and `hdrs` are written and used only within one call
// of `recv`/`send` (which takes `&mut self`) and the vectors are cleared before it returns, so
// between calls a `BatchIo` holds no pointer and moving it to another thread is sound.
#[cfg(target_os = "linux")]
unsafe impl Send for BatchIo {}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use crate::addr;
    use std::mem;
    use std::os::fd::AsRawFd;

    fn empty_hdr() -> libc::mmsghdr {
        // SAFETY: mmsghdr is a plain C struct (integers and null pointers) valid when zeroed.
        unsafe { mem::zeroed() }
    }

    impl BatchIo {
        /// Scratch space for batches of up to `batch` datagrams.
        pub fn new(batch: usize) -> Self {
            Self {
                iovs: Vec::with_capacity(batch),
                addrs: Vec::with_capacity(batch),
                hdrs: Vec::with_capacity(batch),
            }
        }

        fn prepare(&mut self, n: usize) {
            self.iovs.clear();
            self.hdrs.clear();
            self.addrs.clear();
            self.addrs.resize(n, addr::zeroed_storage());
        }

        /// Drops every pointer built by `prepare`/`link` (see the `Send` impl).
        fn finish(&mut self) {
            self.iovs.clear();
            self.hdrs.clear();
        }

        fn link(&mut self) {
            for (i, h) in self.hdrs.iter_mut().enumerate() {
                h.msg_hdr.msg_iov = &mut self.iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            }
        }

        /// Reads up to `bufs.len()` datagrams into `bufs` in order, blocking (up to the socket's
        /// read timeout) for
        /// the first only (`MSG_WAITFORONE`). Appends one [`Received`] per datagram to `out`.
        pub fn recv<'b>(
            &mut self,
            sock: &UdpSocket,
            bufs: impl ExactSizeIterator<Item = &'b mut [u8]>,
            out: &mut Vec<Received>,
        ) -> io::Result<()> {
            let n = bufs.len().min(u32::MAX as usize);
            self.prepare(n);
            for b in bufs.take(n) {
                self.iovs.push(libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                });
                let mut h = empty_hdr();
                h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                self.hdrs.push(h);
            }
            self.link();
            // SAFETY: `hdrs[..n]` point at `iovs[i]` (each describing a live, exclusively
            // borrowed buffer of `iov_len` bytes) and at `addrs[i]` with `msg_namelen` bytes;
            // all outlive the call. The kernel writes only within those bounds.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                self.finish();
                return Err(e);
            }
            for (h, a) in self.hdrs.iter().zip(&self.addrs).take(r as usize) {
                out.push(Received {
                    len: h.msg_len as usize,
                    from: addr::decode(a),
                    truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                });
            }
            self.finish();
            Ok(())
        }

        /// Sends the `count` datagrams `msg(0)..msg(count - 1)` (`(datagram, destination)`);
        /// returns `(sent, failed)`. A datagram the kernel refuses is skipped and counted as
        /// failed; the rest are still sent. On a connected socket the destination must be the
        /// connected address.
        pub fn send<'m>(
            &mut self,
            sock: &impl SendSocket,
            count: usize,
            msg: impl Fn(usize) -> (&'m [u8], SocketAddr),
        ) -> (usize, usize) {
            let (mut sent, mut failed) = (0, 0);
            while sent + failed < count {
                let first = sent + failed;
                let n = (count - first).min(u32::MAX as usize);
                self.prepare(n);
                for i in 0..n {
                    let (data, to) = msg(first + i);
                    self.iovs.push(libc::iovec {
                        iov_base: data.as_ptr().cast_mut().cast(),
                        iov_len: data.len(),
                    });
                    let mut h = empty_hdr();
                    h.msg_hdr.msg_namelen = addr::encode(&mut self.addrs[i], to);
                    self.hdrs.push(h);
                }
                self.link();
                // SAFETY: as in `recv`; the kernel only reads the iovecs (the `*mut` cast of
                // shared data is never written through) and the addresses.
                let r = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        self.hdrs.as_mut_ptr(),
                        n as libc::c_uint,
                        0,
                    )
                };
                if r <= 0 {
                    failed += 1;
                } else {
                    sent += r as usize;
                }
            }
            self.finish();
            (sent, failed)
        }
    }
}

/// Portable fallback: one syscall per datagram.
#[cfg(not(target_os = "linux"))]
pub struct BatchIo;

#[cfg(not(target_os = "linux"))]
impl BatchIo {
    /// Scratch space (none needed here).
    pub fn new(_batch: usize) -> Self {
        Self
    }

    /// Reads one datagram into the first of `bufs`, blocking up to the socket's read timeout.
    pub fn recv<'b>(
        &mut self,
        sock: &UdpSocket,
        mut bufs: impl ExactSizeIterator<Item = &'b mut [u8]>,
        out: &mut Vec<Received>,
    ) -> io::Result<()> {
        let b = bufs.next().ok_or(io::ErrorKind::InvalidInput)?;
        let (len, from) = sock.recv_from(b)?;
        out.push(Received {
            len,
            from: Some(from),
            truncated: len == b.len(),
        });
        Ok(())
    }

    /// Sends the `count` datagrams `msg(0)..msg(count - 1)` one by one; returns
    /// `(sent, failed)`.
    pub fn send<'m>(
        &mut self,
        sock: &impl SendSocket,
        count: usize,
        msg: impl Fn(usize) -> (&'m [u8], SocketAddr),
    ) -> (usize, usize) {
        let sent = (0..count)
            .filter(|&i| {
                let (d, to) = msg(i);
                sock.send_one(d, to).is_ok()
            })
            .count();
        (sent, count - sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batch_send_and_receive_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut io = BatchIo::new(8);
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        assert_eq!(io.send(&tx, 5, |i| (&msgs[i][..], to)), (5, 0));
        let mut got = Vec::new();
        let mut storage = [[0u8; 12]; 8];
        while got.len() < 5 {
            let before = got.len();
            io.recv(&rx, storage.iter_mut().map(|b| &mut b[..]), &mut got)
                .unwrap();
            for (k, r) in got[before..].iter().enumerate() {
                let i = before + k;
                assert_eq!(r.from, Some(tx.local_addr().unwrap()));
                assert_eq!(r.len, 10 + i.min(2), "datagram {i}");
                assert_eq!(r.truncated, i > 2);
                assert_eq!(storage[k][0], i as u8);
            }
        }
    }
}
