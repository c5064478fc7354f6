//! The handover protocol's messages on the Unix stream socket, and the file descriptors they
//! carry (`SCM_RIGHTS`).
//!
//! Each message is a 4-octet big-endian length, then that many octets: a tag octet and the body.
//! Descriptors ride on the first octet of the length (one `sendmsg`).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::cid::CidConfig;
use crate::secrets::Secrets;

/// Protocol version in [`Msg::Hello`]; a process speaking another one is refused.
pub(super) const VERSION: u8 = 1;
/// Most descriptors one message carries: both slots of 128 shards.
const MAX_FDS: usize = 256;
/// Longest message body.
const MAX_LEN: usize = 64 * 1024;

/// What the old process hands over.
#[derive(Debug, Clone)]
pub(super) struct State {
    /// The old process's generation (the new one is `generation + 1`).
    pub(super) generation: u32,
    /// The old process's slot (the new one takes the other).
    pub(super) slot: u8,
    pub(super) secrets: Secrets,
    pub(super) cid: CidConfig,
}

/// One message.
#[derive(Debug)]
pub(super) enum Msg {
    /// New → old: "hand over to me".
    Hello { version: u8, shards: u16 },
    /// Old → new, with the reuseport group's `2 * shards` sockets in group order.
    State(State),
    /// Old → new: refused, and why.
    Busy(String),
    /// New → old, with the datagram socket the old process forwards new connections' datagrams
    /// into: "my shards run; stop accepting".
    Ready,
    /// Old → new: "I accept no more connections".
    Retired,
    /// New → old: "the steering program sends new connections to me".
    Switched,
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Msg::Hello { version, shards } => {
                b.push(b'H');
                b.push(*version);
                b.extend_from_slice(&shards.to_be_bytes());
            }
            Msg::State(s) => {
                b.push(b'S');
                b.extend_from_slice(&s.generation.to_be_bytes());
                b.push(s.slot);
                let n = u16::try_from(s.cid.n_shards()).expect("at most 256 shards");
                b.extend_from_slice(&n.to_be_bytes());
                b.extend_from_slice(&s.secrets.to_bytes());
                let c = s.cid.lb_config();
                // the config as given: the shard byte is declared again by CidConfig::new
                let octets = |v: usize| u8::try_from(v).expect("QUIC-LB lengths fit in an octet");
                b.push(c.config_id());
                b.push(octets(c.server_id_len()));
                b.push(octets(c.nonce_len()));
                b.push(u8::from(c.self_encodes_length()));
                match c.key() {
                    Some(k) => {
                        b.push(1);
                        b.extend_from_slice(k);
                    }
                    None => b.push(0),
                }
                b.extend_from_slice(s.cid.server_id());
            }
            Msg::Busy(why) => {
                b.push(b'B');
                b.extend_from_slice(why.as_bytes());
            }
            Msg::Ready => b.push(b'R'),
            Msg::Retired => b.push(b'T'),
            Msg::Switched => b.push(b'W'),
        }
        b
    }

    fn decode(b: &[u8]) -> io::Result<Self> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("handover: {what}"));
        let (&tag, body) = b.split_first().ok_or_else(|| bad("empty message"))?;
        let mut r = Reader(body);
        let msg = match tag {
            b'H' => Msg::Hello {
                version: r.u8()?,
                shards: r.u16()?,
            },
            b'S' => {
                let generation = r.u32()?;
                let slot = r.u8()?;
                let n = usize::from(r.u16()?);
                let secrets = Secrets::from_bytes(r.take(Secrets::LEN)?.try_into().expect("len"));
                let (id, sid_len, nonce_len, self_len) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
                let key: Option<[u8; 16]> = match r.u8()? {
                    0 => None,
                    _ => Some(r.take(16)?.try_into().expect("16 octets")),
                };
                let sid = r.take(usize::from(sid_len))?;
                let config =
                    quic_lb::Config::new(id, usize::from(sid_len), usize::from(nonce_len), key)
                        .map_err(|e| bad(&format!("QUIC-LB config: {e}")))?
                        .with_self_encoded_length(self_len != 0);
                let cid = CidConfig::new(config, sid, n)
                    .map_err(|e| bad(&format!("CID config: {e}")))?
                    .with_shard_key(secrets.shard_key)
                    .with_slot(slot)
                    .map_err(|e| bad(&format!("CID config: {e}")))?;
                Msg::State(State {
                    generation,
                    slot,
                    secrets,
                    cid,
                })
            }
            b'B' => Msg::Busy(String::from_utf8_lossy(r.0).into_owned()),
            b'R' => Msg::Ready,
            b'T' => Msg::Retired,
            b'W' => Msg::Switched,
            _ => return Err(bad(&format!("unknown message {tag:#04x}"))),
        };
        Ok(msg)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handover: message too short",
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
}

/// Sends `msg` with `fds` attached.
pub(super) fn send(stream: &UnixStream, msg: &Msg, fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} descriptors");
    let body = msg.encode();
    let mut buf = u32::try_from(body.len())
        .expect("short messages")
        .to_be_bytes()
        .to_vec();
    buf.extend_from_slice(&body);
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = control.len() as _;
        // SAFETY: `control` has room for one header and `fds` (CMSG_SPACE above); the macros
        // only compute pointers into it, and `fds` is copied in within its bounds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    let sent = loop {
        // SAFETY: `hdr` points at live buffers for the whole call.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // the descriptors went with the first part
    let mut w = stream;
    w.write_all(&buf[sent..])
}

/// Receives one message; the descriptors that came with it are appended to `fds`.
/// `UnexpectedEof` when the peer closed the connection.
pub(super) fn recv(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> io::Result<Msg> {
    let mut len = [0u8; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    let mut control = vec![0u8; space as usize];
    let mut iov = libc::iovec {
        iov_base: len.as_mut_ptr().cast(),
        iov_len: len.len(),
    };
    // SAFETY: an all-zero msghdr is valid.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: `hdr` points at live buffers for the whole call.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: the kernel filled `control` up to `msg_controllen`; CMSG_FIRSTHDR/NXTHDR stay
    // within it, and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors
    // that are now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut r = stream;
    r.read_exact(&mut len[n..])?;
    let body_len = u32::from_be_bytes(len) as usize;
    if body_len > MAX_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "handover: message too long",
        ));
    }
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body)?;
    Msg::decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn messages_and_descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (d1, d2) = UnixDatagram::pair().unwrap();
        let cid = CidConfig::new(
            quic_lb::Config::new(1, 3, 6, Some([5; 16])).unwrap(),
            &[1, 2, 3],
            4,
        )
        .unwrap()
        .with_slot(1)
        .unwrap();
        let secrets = Secrets::random();
        let state = State {
            generation: 7,
            slot: 1,
            secrets: secrets.clone(),
            cid: cid.clone(),
        };
        send(&a, &Msg::State(state), &[d1.as_raw_fd()]).unwrap();
        send(
            &a,
            &Msg::Hello {
                version: VERSION,
                shards: 4,
            },
            &[],
        )
        .unwrap();
        let mut fds = Vec::new();
        let Msg::State(got) = recv(&b, &mut fds).unwrap() else {
            panic!("not a state");
        };
        assert_eq!((got.generation, got.slot), (7, 1));
        assert_eq!(got.secrets, secrets);
        assert_eq!(got.cid.cid_len(), cid.cid_len());
        assert_eq!(got.cid.server_id(), cid.server_id());
        assert_eq!(got.cid.slot(), 1);
        assert_eq!(fds.len(), 1);
        // the descriptor is the same socket: what goes into d2 comes out of it
        let passed = UnixDatagram::from(fds.pop().unwrap());
        d2.send(b"x").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(passed.recv(&mut buf).unwrap(), 1);
        assert!(matches!(
            recv(&b, &mut fds).unwrap(),
            Msg::Hello {
                version: VERSION,
                shards: 4
            }
        ));
        drop(a);
        let e = recv(&b, &mut fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [&b""[..], b"S\x00", b"Z", b"H\x01"] {
            assert!(Msg::decode(body).is_err(), "{body:?}");
        }
    }
}
