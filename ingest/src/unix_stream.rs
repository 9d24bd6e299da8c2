//! The connections nginx makes to ingest's Unix socket, registered with the
//! event loop for readability only.
//!
//! Why not tokio's `UnixStream`: tokio registers every socket for both
//! readable and writable events (`EPOLLIN | EPOLLOUT`, edge-triggered), and
//! Linux signals a Unix stream writable each time its peer *reads* from it
//! (`unix_write_space` wakes every waiter, where TCP wakes only a writer that
//! found its buffer full). So each answer nginx read woke the ingest worker
//! that had sent it, if that worker was idle in `epoll_wait`, only to learn
//! that it could write again. Ingest's answers are a few hundred bytes and
//! practically never find the socket's buffer (~200 KB) full, so this stream
//! asks the event loop for readability alone and writes straight away; only
//! a write that does find the buffer full registers a second descriptor of
//! the same socket for writability, for as long as it waits (what that
//! saves is in docs/PERFORMANCE.md, "What made it fast").

use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connected Unix stream whose reads wait on the event loop and whose
/// writes go out at once (see the module's documentation).
#[derive(Debug)]
pub struct ReadInterestStream {
    /// The socket, registered for `Interest::READABLE` only.
    socket: AsyncFd<UnixStream>,
    /// A duplicate descriptor registered for writability while a write
    /// waits for room in the buffer; `None` otherwise.
    waiting_write: Option<AsyncFd<OwnedFd>>,
}

impl ReadInterestStream {
    /// Takes over `stream`, made non-blocking, on the current Tokio
    /// runtime's event loop (so it must be called inside a runtime).
    pub fn new(stream: UnixStream) -> io::Result<ReadInterestStream> {
        stream.set_nonblocking(true)?;
        Ok(ReadInterestStream {
            socket: register(stream, Interest::READABLE)?,
            waiting_write: None,
        })
    }
}

fn register<T: AsRawFd>(owned: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owned` owns its descriptor (a `UnixStream` or an `OwnedFd`),
    // which therefore stays open, and the same, until the `AsyncFd` that
    // takes `owned` over is dropped.
    unsafe { AsyncFd::register_with_interest(owned, interest) }.map_err(io::Error::from)
}

impl AsyncRead for ReadInterestStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut ready = ready!(this.socket.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes to the unfilled part, and only the
            // `received` bytes it reports are then marked initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            let received = unsafe { libc::recv(this.socket.as_raw_fd(), unfilled.as_mut_ptr().cast(), room, 0) };
            if received < 0 {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::WouldBlock => ready.clear_ready(),
                    io::ErrorKind::Interrupted => {}
                    _ => return Poll::Ready(Err(error)),
                }
                continue;
            }
            let received = received as usize;
            // SAFETY: see above.
            unsafe { buf.assume_init(received) };
            buf.advance(received);
            // As tokio does: a read that did not fill the buffer emptied the
            // socket, so the next read waits for the next edge instead of
            // making one more system call to hear "would block".
            if received > 0 && received < room {
                ready.clear_ready();
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for ReadInterestStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.socket.get_ref().write(data) {
                Ok(written) => {
                    // Room again: stop listening for writability.
                    this.waiting_write = None;
                    return Poll::Ready(Ok(written));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let waiting = match &mut this.waiting_write {
                        Some(waiting) => waiting,
                        none => {
                            let duplicate = OwnedFd::from(this.socket.get_ref().try_clone()?);
                            none.insert(register(duplicate, Interest::WRITABLE)?)
                        }
                    };
                    // A new registration reports the socket's current state,
                    // so room made before it was registered is not missed.
                    ready!(waiting.poll_write_ready(cx))?.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The event mask (hex) the runtime's epoll instance holds for `fd`,
    /// read from /proc; `None` if `fd` is not registered.
    fn epoll_mask(fd: i32) -> Option<u32> {
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let is_epoll =
                std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:[eventpoll]");
            if !is_epoll {
                continue;
            }
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy()))
                .unwrap_or_default();
            for line in info.lines() {
                let mut words = line.split_whitespace();
                if words.next() == Some("tfd:") && words.next() == Some(&fd.to_string()) {
                    let mask = words.skip_while(|w| *w != "events:").nth(1)?;
                    return u32::from_str_radix(mask, 16).ok();
                }
            }
        }
        None
    }

    #[tokio::test]
    async fn is_registered_for_readability_and_not_writability() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        let stream = ReadInterestStream::new(ours).unwrap();
        let mask = epoll_mask(fd).expect("the socket is registered with the runtime's epoll");
        assert_ne!(mask & libc::EPOLLIN as u32, 0, "mask {mask:x} lacks EPOLLIN");
        assert_eq!(mask & libc::EPOLLOUT as u32, 0, "mask {mask:x} has EPOLLOUT");
        drop(stream);

        // The check can tell: tokio's own stream asks for both.
        let (theirs, _peer) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let fd = theirs.as_raw_fd();
        let _tokio = tokio::net::UnixStream::from_std(theirs).unwrap();
        assert_ne!(epoll_mask(fd).unwrap() & libc::EPOLLOUT as u32, 0);
    }

    /// Our stream and, at its other end, tokio's.
    fn connected_pair() -> (ReadInterestStream, tokio::net::UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        (
            ReadInterestStream::new(ours).unwrap(),
            tokio::net::UnixStream::from_std(theirs).unwrap(),
        )
    }

    #[tokio::test]
    async fn carries_data_both_ways_and_sees_the_end() {
        let (mut ours, mut theirs) = connected_pair();

        theirs.write_all(b"POST /ingest").await.unwrap();
        let mut got = [0u8; 64];
        let n = ours.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"POST /ingest");

        ours.write_all(b"HTTP/1.1 202 Accepted").await.unwrap();
        let n = theirs.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"HTTP/1.1 202 Accepted");

        drop(theirs);
        assert_eq!(ours.read(&mut got).await.unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn a_write_to_a_full_buffer_waits_for_room_and_loses_nothing() {
        let (mut ours, mut theirs) = connected_pair();
        // Several times the socket's buffer.
        let sent: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();

        // Nobody reads yet: the first write fills the buffer, the next waits.
        let first = ours.write(&sent).await.unwrap();
        assert!(first < sent.len(), "the buffer took all {} bytes", sent.len());
        let next = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut ours).poll_write(cx, &sent[first..]))).await;
        assert!(next.is_pending(), "a write to a full buffer must wait");
        assert!(
            ours.waiting_write.is_some(),
            "waiting for room registers for writability"
        );

        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            theirs.read_to_end(&mut received).await.unwrap();
            received
        });
        let rest = sent[first..].to_vec();
        let writer = async {
            ours.write_all(&rest).await.unwrap();
            ours.shutdown().await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), writer)
            .await
            .expect("the write finishes once the peer reads");
        assert!(ours.waiting_write.is_none(), "the registration is dropped once written");
        let received = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
            .await
            .expect("no hang")
            .unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the bytes arrived changed or out of order");
    }
}
