//! Hub bytes moved to a target without passing through the agent's memory.
//!
//! Hub → agent frames are not masked, so the payload of a large DATA frame can go from the
//! session's socket to the target's as it is. On a plain session (`splice`, on by default) the
//! session's reader reads frame headers into its buffer as usual, but once a DATA frame of at
//! least [`SPLICE_MIN`] bytes begins for a stream with a connected target, it moves the
//! payload into that stream's pipe with `splice(2)` (the kernel hands over references to the
//! received pages) and from the pipe on into the target socket. The receive and the send that
//! would copy every byte into and out of the agent are gone.
//!
//! A pipe is first in, first out, and only its stream fills it, so bytes leave it in the order
//! they came. Whatever the target does not take at once stays in the pipe, and the stream's
//! writer task moves it on in turn with anything else queued for the stream: a slow target
//! stalls only its own stream. A pipe holds at most the stream's window, because the hub may
//! not send more than the agent has not yet returned as credit, and the reader moves no more
//! than the stream's remaining credit. Every call here is non-blocking.
//!
//! Pipes cost two file descriptors each and kernel memory the system limits per user, so the
//! agent opens at most [`MAX_PIPES`] at once (fewer under a low open-file limit), only pipes
//! that hold a whole window, and closes a stream's pipe once it has sat empty for
//! [`PIPE_IDLE_MS`]; streams without one stay on buffers. How the reader finds where payloads
//! begin is described on the session's `Splicer`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most pipes the agent keeps open at once: 512 file descriptors, and at most 64 MiB of
/// pipe capacity with the default 256 KiB stream window. Fewer under a low open-file limit
/// ([`fit_to_open_files`]).
pub(crate) const MAX_PIPES: usize = 256;

/// How long a stream keeps an empty pipe it has not used: a quiet stream gives its place
/// back, and gets a pipe again with its next large payload.
pub(crate) const PIPE_IDLE_MS: u64 = 5_000;

/// The smallest DATA payload worth moving by splice: below it, the two extra system calls
/// cost more than the copies they save.
pub(crate) const SPLICE_MIN: usize = 16 * 1024;

/// A count of open pipes with a ceiling.
#[derive(Debug)]
pub(crate) struct PipeBudget {
    open: AtomicUsize,
    max: AtomicUsize,
}

impl PipeBudget {
    pub(crate) const fn new(max: usize) -> PipeBudget {
        PipeBudget {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// Pipes open now.
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < self.max.load(Ordering::Relaxed)).then_some(open + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The process's pipes.
static PIPES: PipeBudget = PipeBudget::new(MAX_PIPES);

/// Pipes open now in the process.
pub(crate) fn pipes_open() -> usize {
    PIPES.open()
}

/// Caps the process's pipes at an eighth of its open-file limit (each takes two descriptors),
/// so that a low limit leaves most descriptors to sockets, and at [`MAX_PIPES`]. Returns the
/// cap.
pub(crate) fn fit_to_open_files() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let max = limit.map_or(MAX_PIPES, |files| {
        usize::try_from(files / 8).map_or(MAX_PIPES, |n| n.min(MAX_PIPES))
    });
    PIPES.max.store(max, Ordering::Relaxed);
    max
}

/// One stream's pipe.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    budget: &'static PipeBudget,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.budget.give_back();
    }
}

impl Pipe {
    /// A non-blocking pipe that holds at least `size` bytes, counted against [`MAX_PIPES`]
    /// until it is dropped. Fails when that many are open, when the process is out of file
    /// descriptors, or when the kernel will not make the pipe that large (the per-user limit
    /// on pipe memory).
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        Pipe::counted(&PIPES, size)
    }

    /// A pipe counted against `budget`.
    fn counted(budget: &'static PipeBudget, size: usize) -> io::Result<Pipe> {
        if !budget.take() {
            return Err(io::Error::other("the agent's pipes are all in use"));
        }
        let made = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC);
        let (read, write) = match made {
            Ok(ends) => ends,
            Err(err) => {
                budget.give_back();
                return Err(err.into());
            }
        };
        // Counted from here on: dropping the pipe gives its place back.
        let pipe = Pipe {
            read,
            write,
            budget,
        };
        let got = rustix::pipe::fcntl_setpipe_size(&pipe.write, size)?;
        if got < size {
            return Err(io::Error::other(format!(
                "the kernel made the pipe {got} bytes, not {size}"
            )));
        }
        Ok(pipe)
    }

    /// Moves what `from` has received, up to `max` bytes, into the pipe without waiting.
    ///
    /// `Ok(0)` is the end of `from`'s stream. `WouldBlock` means `from` had nothing: its
    /// readiness is cleared, so waiting for it is sound. [`Busy`](io::ErrorKind::ResourceBusy)
    /// means `from` holds bytes that a splice cannot take now: the pipe is full (its capacity
    /// counts pieces, not bytes), or a TCP urgent mark is next, which a splice never passes and
    /// a receive steps over. Readiness is kept then, so that a receive runs at once.
    pub(crate) fn fill(&self, from: &TcpStream, max: usize) -> io::Result<usize> {
        from.try_io(Interest::READABLE, || {
            match splice(from.as_fd(), self.write.as_fd(), max) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // `FIONREAD` cannot tell: it counts nothing before an urgent mark.
                    let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
                    match socket2::SockRef::from(from).peek(&mut probe) {
                        Ok(0) => Ok(0),
                        Ok(_) => Err(io::Error::new(
                            io::ErrorKind::ResourceBusy,
                            "the pipe is full or an urgent mark is next",
                        )),
                        Err(probe) => Err(probe),
                    }
                }
                other => other,
            }
        })
    }

    /// Moves up to `max` bytes from the pipe into `to` without waiting; `WouldBlock` when `to`
    /// has no room.
    pub(crate) fn push(&self, to: &TcpStream, max: usize) -> io::Result<usize> {
        to.try_io(Interest::WRITABLE, || {
            splice(self.read.as_fd(), to.as_fd(), max)
        })
    }

    /// Moves exactly `len` bytes from the pipe into `to`, waiting for room as needed.
    pub(crate) async fn drain(&self, to: &TcpStream, mut len: usize) -> io::Result<()> {
        while len > 0 {
            to.writable().await?;
            match self.push(to, len) {
                // The pipe held fewer bytes than were put in: never, unless it was tampered
                // with. Fail the stream rather than send a short one.
                Ok(0) => return Err(io::Error::other("pipe emptied early")),
                Ok(n) => len -= n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // A full socket, or an empty pipe: waiting for room would never end then.
                    if rustix::io::ioctl_fionread(&self.read).is_ok_and(|n| n == 0) {
                        return Err(io::Error::other("pipe emptied early"));
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// One non-blocking `splice(2)` of up to `max` bytes, retried on EINTR.
fn splice(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    max: usize,
) -> io::Result<usize> {
    loop {
        match rustix::pipe::splice(
            from,
            None,
            to,
            None,
            max,
            SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
        ) {
            Err(err) if err == rustix::io::Errno::INTR => {}
            result => return result.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::stream::tests::pair;

    #[tokio::test]
    async fn bytes_go_through_the_pipe_in_order_and_the_end_reads_as_zero() {
        static BUDGET: PipeBudget = PipeBudget::new(1);
        let (from, mut hub) = pair().await;
        let (to, mut target) = pair().await;
        let pipe = Pipe::counted(&BUDGET, 256 * 1024).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            hub.write_all(&sent).await.unwrap();
            hub.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            target.read_to_end(&mut got).await.unwrap();
            got
        });
        loop {
            from.readable().await.unwrap();
            match pipe.fill(&from, 100_000) {
                Ok(0) => break,
                Ok(n) => pipe.drain(&to, n).await.unwrap(),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => panic!("fill failed: {err}"),
            }
        }
        drop(to);
        writer.await.unwrap();
        assert!(
            reader.await.unwrap() == data,
            "bytes lost, repeated or reordered"
        );
    }

    #[tokio::test]
    async fn a_drain_of_more_than_the_pipe_holds_fails_instead_of_waiting() {
        static BUDGET: PipeBudget = PipeBudget::new(1);
        let (_from, _hub) = pair().await;
        let (to, _target) = pair().await;
        let pipe = Pipe::counted(&BUDGET, 64 * 1024).unwrap();
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), pipe.drain(&to, 10))
            .await
            .expect("the drain returned")
            .unwrap_err();
        assert!(err.to_string().contains("emptied early"), "{err}");
    }

    /// `hub` writes `bytes` in a segment of its own (no coalescing with what follows).
    async fn segment(hub: &mut TcpStream, bytes: &[u8]) {
        hub.set_nodelay(true).unwrap();
        hub.write_all(bytes).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    /// One read of `from`, which must not wait for more bytes to arrive.
    async fn read_at_once(mut from: TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), from.read(&mut buf))
            .await
            .expect("the read waited for bytes that were already there")
            .unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn a_full_pipe_with_bytes_waiting_is_busy_and_keeps_the_socket_ready() {
        static BUDGET: PipeBudget = PipeBudget::new(1);
        let (from, mut hub) = pair().await;
        // One page: a single piece fills it.
        let pipe = Pipe::counted(&BUDGET, 4096).unwrap();
        segment(&mut hub, &[1; 200]).await;
        from.readable().await.unwrap();
        // Every splice takes a piece of its own: after one, the pipe is full.
        assert_eq!(pipe.fill(&from, 100).unwrap(), 100);
        let err = pipe.fill(&from, 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
        // Readiness was kept: a read takes the rest at once.
        assert_eq!(read_at_once(from).await, [1; 100]);
    }

    #[tokio::test]
    async fn an_urgent_mark_is_busy_and_a_read_steps_over_it() {
        static BUDGET: PipeBudget = PipeBudget::new(1);
        let (from, mut hub) = pair().await;
        let pipe = Pipe::counted(&BUDGET, 256 * 1024).unwrap();
        segment(&mut hub, &[1; 1000]).await;
        socket2::SockRef::from(&hub).send_out_of_band(b"!").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        segment(&mut hub, &[2; 1000]).await;
        from.readable().await.unwrap();
        let mut moved = 0;
        let err = loop {
            match pipe.fill(&from, 1 << 20) {
                Ok(0) => panic!("a splice at the mark read as the end"),
                Ok(n) => moved += n,
                Err(err) => break err,
            }
        };
        assert_eq!(moved, 1000, "a splice stops at the mark");
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
        // A read at once returns what follows the urgent byte.
        assert_eq!(read_at_once(from).await, [2; 1000]);
    }

    #[test]
    fn a_budget_opens_at_most_its_pipes_and_a_dropped_one_frees_its_place() {
        static BUDGET: PipeBudget = PipeBudget::new(3);
        let mut pipes: Vec<Pipe> = (0..3)
            .map(|_| Pipe::counted(&BUDGET, 64 * 1024).unwrap())
            .collect();
        assert_eq!(BUDGET.open(), 3);
        assert!(Pipe::counted(&BUDGET, 64 * 1024).is_err(), "one over");
        assert_eq!(BUDGET.open(), 3, "a refusal takes no place");
        drop(pipes.pop());
        assert_eq!(BUDGET.open(), 2);
        assert!(Pipe::counted(&BUDGET, 64 * 1024).is_ok());
    }

    #[test]
    fn a_pipe_the_kernel_will_not_make_that_large_is_refused() {
        // Past `pipe-max-size` (1 MiB by default) and any size the kernel makes: the resize
        // fails, and the place in the budget is given back.
        static BUDGET: PipeBudget = PipeBudget::new(1);
        assert!(Pipe::counted(&BUDGET, 1 << 40).is_err());
        assert_eq!(BUDGET.open(), 0);
        assert!(Pipe::counted(&BUDGET, 64 * 1024).is_ok());
    }
}
