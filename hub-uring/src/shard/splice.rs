//! Client bytes moved to a plain agent connection without passing through the hub's memory.
//!
//! A bulk client stream gets a pipe of its own. Its reader moves what the client sent into the
//! pipe with `splice(2)` (the kernel hands over references to the received pages), queues a
//! DATA frame header that says how many bytes follow, and the session's writer sends the
//! header and then moves exactly that many bytes from the pipe into the agent connection, again
//! by reference. The two copies a receive and a send would make in the hub are gone; the
//! agent's receive makes the only one. Hub → agent frames are not masked, so the bytes travel
//! as they are; agent → hub frames are masked and still pass through a buffer to be unmasked.
//!
//! A pipe is first in, first out, and only its stream fills it, so the writer, taking the
//! stream's frames in order, always takes the bytes its header announced. Both ends are
//! non-blocking: nothing here can stall a shard.
//!
//! Pipes cost two file descriptors each and kernel memory the system limits per user, so a
//! shard opens at most [`PIPES_PER_SHARD`] at once, and only pipes that hold a whole frame;
//! streams beyond that stay on buffers.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use compio::net::TcpStream;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::sync::Notify;

/// The most pipes one shard keeps open at once: 512 file descriptors, and at most 64 MiB of
/// pipe capacity with the default 256 KiB stream window.
pub(crate) const PIPES_PER_SHARD: usize = 256;

/// A shard's count of open pipes.
#[derive(Debug, Default)]
pub(crate) struct PipeBudget {
    open: Cell<usize>,
}

impl PipeBudget {
    /// Pipes open now.
    pub(crate) fn open(&self) -> usize {
        self.open.get()
    }

    /// A non-blocking pipe that holds at least `size` bytes, counted against the budget until
    /// it is dropped. Fails when the shard has [`PIPES_PER_SHARD`] open, when the process is
    /// out of file descriptors, or when the kernel will not make the pipe that large (the
    /// per-user limit on pipe memory): a smaller pipe would move a frame in many small pieces.
    pub(crate) fn pipe(self: &Rc<Self>, size: usize) -> io::Result<Pipe> {
        if self.open.get() >= PIPES_PER_SHARD {
            return Err(io::Error::other("the shard's pipes are all in use"));
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let got = rustix::pipe::fcntl_setpipe_size(&write, size)?;
        if got < size {
            return Err(io::Error::other(format!(
                "the kernel made the pipe {got} bytes, not {size}"
            )));
        }
        self.open.set(self.open.get() + 1);
        Ok(Pipe {
            read,
            write,
            held: Cell::new(0),
            drained: Notify::new(),
            budget: self.clone(),
        })
    }
}

/// One stream's pipe and how many bytes it holds.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes moved in and not yet out.
    held: Cell<usize>,
    /// Signalled each time the writer has moved bytes out.
    drained: Notify,
    budget: Rc<PipeBudget>,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.budget.open.set(self.budget.open.get() - 1);
    }
}

impl Pipe {
    /// Bytes in the pipe that the writer has not taken yet.
    pub(crate) fn held(&self) -> usize {
        self.held.get()
    }

    /// Moves what `from` has received, up to `max` bytes, into the pipe without waiting.
    /// `Ok(0)` is the end of `from`'s stream; `WouldBlock` means `from` had nothing, or the
    /// pipe is full (only possible while [`Pipe::held`] is not zero). Either may also mean that
    /// `from` sits at a TCP urgent mark, which a splice never passes and a receive steps over:
    /// the caller tells these apart with a receive.
    pub(crate) fn fill(&self, from: &TcpStream, max: usize) -> io::Result<usize> {
        let n = rustix::pipe::splice(
            from.as_fd(),
            None,
            &self.write,
            None,
            max,
            SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
        )?;
        self.held.set(self.held.get() + n);
        Ok(n)
    }

    /// Waits until the writer has taken some of the pipe's bytes (at once if it did since the
    /// last wait).
    pub(crate) async fn drained(&self) {
        self.drained.notified().await;
    }

    /// Moves `len` bytes from the pipe into `to`, waiting for `to` to become writable when it
    /// is full. `to` must be non-blocking, or a full socket would block the shard. `more` says
    /// more bytes follow at once, so the kernel need not push a partly filled segment.
    pub(crate) async fn drain(&self, to: &TcpStream, len: usize, more: bool) -> io::Result<()> {
        debug_assert!(len <= self.held.get(), "drain only what was filled");
        let flags = if more {
            SpliceFlags::NONBLOCK | SpliceFlags::MOVE | SpliceFlags::MORE
        } else {
            SpliceFlags::NONBLOCK | SpliceFlags::MOVE
        };
        let mut left = len;
        let result = loop {
            if left == 0 {
                break Ok(());
            }
            match rustix::pipe::splice(&self.read, None, to.as_fd(), None, left, flags) {
                // The pipe held fewer bytes than were filled: never, unless the pipe was
                // tampered with. Fail the connection rather than send a short frame.
                Ok(0) => break Err(io::Error::other("pipe emptied early")),
                Ok(n) => {
                    left -= n;
                    self.held.set(self.held.get() - n);
                }
                Err(e) if e == rustix::io::Errno::AGAIN => {
                    // A full socket, or an empty pipe: the latter would be a bug, and waiting
                    // for room would then never end.
                    if rustix::io::ioctl_fionread(&self.read).is_ok_and(|n| n == 0) {
                        break Err(io::Error::other("pipe emptied early"));
                    }
                    if let Err(e) = wait_writable(to).await {
                        break Err(e);
                    }
                }
                Err(e) if e == rustix::io::Errno::INTR => {}
                Err(e) => break Err(e.into()),
            }
        };
        self.drained.notify_one();
        result
    }
}

async fn wait_writable(to: &TcpStream) -> io::Result<()> {
    to.to_poll_fd()?.write_ready().await
}

/// Makes `socket` non-blocking, as splicing into or out of it needs. compio's io_uring
/// operations ignore the flag (they wait as before), and its epoll driver sets it anyway.
pub(crate) fn set_nonblocking(socket: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(socket).set_nonblocking(true)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    fn pair(rt: &compio::runtime::Runtime) -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let outside = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (inside, _) = listener.accept().unwrap();
        let inside = rt.block_on(async { TcpStream::from_std(inside).unwrap() });
        set_nonblocking(&inside).unwrap();
        (inside, outside)
    }

    #[test]
    fn bytes_go_through_the_pipe_in_order_and_the_end_reads_as_zero() {
        let rt = compio::runtime::Runtime::new().unwrap();
        let (from, mut client) = pair(&rt);
        let (to, mut agent) = pair(&rt);
        let pipe = Rc::new(PipeBudget::default()).pipe(256 * 1024).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            agent.read_to_end(&mut got).unwrap();
            got
        });
        rt.block_on(async {
            loop {
                match pipe.fill(&from, 100_000) {
                    Ok(0) => break,
                    Ok(n) => pipe.drain(&to, n, false).await.unwrap(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert_eq!(pipe.held(), 0, "an empty pipe is never full");
                        from.to_poll_fd().unwrap().read_ready().await.unwrap();
                    }
                    Err(e) => panic!("fill failed: {e}"),
                }
            }
            assert_eq!(pipe.held(), 0);
        });
        drop(to);
        writer.join().unwrap();
        assert!(
            reader.join().unwrap() == data,
            "bytes lost, repeated or reordered"
        );
    }

    #[test]
    fn a_shard_opens_at_most_its_budget_of_pipes_and_a_dropped_one_frees_its_place() {
        let budget = Rc::new(PipeBudget::default());
        let mut pipes: Vec<Pipe> = (0..PIPES_PER_SHARD)
            .map(|_| budget.pipe(64 * 1024).unwrap())
            .collect();
        assert_eq!(budget.open(), PIPES_PER_SHARD);
        assert!(budget.pipe(64 * 1024).is_err(), "one pipe over the budget");
        drop(pipes.pop());
        assert_eq!(budget.open(), PIPES_PER_SHARD - 1);
        assert!(budget.pipe(64 * 1024).is_ok());
    }

    #[test]
    fn a_pipe_the_kernel_will_not_make_that_large_is_refused() {
        // Larger than any pipe an unprivileged process may ask for (`pipe-max-size`, 1 MiB by
        // default) and than the kernel makes for anyone: the resize fails. (On success the
        // kernel rounds the size up, so the check of the size it reports is only a guard.)
        let budget = Rc::new(PipeBudget::default());
        assert!(budget.pipe(1 << 40).is_err());
        assert_eq!(budget.open(), 0, "a refused pipe is not counted");
    }

    #[test]
    fn a_drain_waits_for_room_and_takes_exactly_what_it_is_asked() {
        let rt = compio::runtime::Runtime::new().unwrap();
        let (from, mut client) = pair(&rt);
        let (to, mut agent) = pair(&rt);
        let pipe = Rc::new(PipeBudget::default()).pipe(1024 * 1024).unwrap();
        client.write_all(&[7u8; 200_000]).unwrap();
        rt.block_on(async {
            let mut filled = 0;
            while filled < 200_000 {
                match pipe.fill(&from, 200_000 - filled) {
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        compio::time::sleep(Duration::from_millis(1)).await
                    }
                    Err(e) => panic!("fill failed: {e}"),
                }
            }
        });
        // Small socket buffers and an agent that reads only later: the drain finds the socket
        // full and has to wait for room.
        socket2::SockRef::from(&to)
            .set_send_buffer_size(4096)
            .unwrap();
        agent.set_nonblocking(false).unwrap();
        socket2::SockRef::from(&agent)
            .set_recv_buffer_size(4096)
            .unwrap();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut got = vec![0u8; 150_000];
            agent.read_exact(&mut got).unwrap();
            got
        });
        rt.block_on(async {
            pipe.drain(&to, 150_000, true).await.unwrap();
        });
        assert_eq!(pipe.held(), 50_000, "the rest stays for the next frame");
        assert!(reader.join().unwrap().iter().all(|&b| b == 7));
    }
}
