//! The byte stream tokio-postgres speaks through in transaction-pooler mode: it cuts what each
//! side writes into whole protocol messages and lets [`Rewriter`] change them on the way.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::rewrite::Rewriter;

/// Bytes rewritten but not yet taken by the server above which writes wait.
const WRITE_BACKLOG: usize = 256 * 1024;

/// `inner` (the connection to the pooler, TLS done) with the messages rewritten.
#[derive(Debug)]
pub(crate) struct PoolerStream<S> {
    inner: S,
    rewriter: Rewriter,
    /// From the client: bytes of a message not complete yet.
    from_client: Vec<u8>,
    /// To the server: rewritten bytes not written yet.
    to_server: Vec<u8>,
    /// From the server: bytes of a message not complete yet.
    from_server: Vec<u8>,
    /// To the client: bytes passed on, not read yet.
    to_client: Vec<u8>,
}

impl<S> PoolerStream<S> {
    pub(super) fn new(inner: S, rewriter: Rewriter) -> Self {
        Self {
            inner,
            rewriter,
            from_client: Vec::new(),
            to_server: Vec::new(),
            from_server: Vec::new(),
            to_client: Vec::new(),
        }
    }
}

/// The length of the whole message at the start of `bytes` (with its type byte, if it has
/// one), once all of it is there.
fn whole_message(bytes: &[u8], has_type: bool) -> io::Result<Option<usize>> {
    let at = usize::from(has_type);
    let Some(length) = bytes.get(at..at + 4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    if length < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed PostgreSQL message",
        ));
    }
    Ok((bytes.len() >= at + length).then_some(at + length))
}

impl<S: AsyncWrite + Unpin> PoolerStream<S> {
    /// Writes what is rewritten to the server, as far as it takes it now.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.to_server.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.to_server))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.to_server.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PoolerStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.to_server.len() >= WRITE_BACKLOG {
            ready!(this.poll_drain(cx))?;
        }
        this.from_client.extend_from_slice(buf);
        let mut start = 0;
        while let Some(length) =
            whole_message(&this.from_client[start..], !this.rewriter.awaits_startup())?
        {
            let message = &this.from_client[start..start + length];
            this.rewriter.client_message(message, &mut this.to_server);
            start += length;
        }
        this.from_client.drain(..start);
        // Whatever the server can take now; poll_flush writes the rest.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PoolerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Until something is passed on: a read of nothing would mean the end of the stream.
        while this.to_client.is_empty() {
            let mut chunk = [0_u8; 8192];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.from_server.extend_from_slice(chunk.filled());
            let mut start = 0;
            while let Some(length) = whole_message(&this.from_server[start..], true)? {
                let message = &this.from_server[start..start + length];
                if this.rewriter.server_message(message) {
                    this.to_client.extend_from_slice(message);
                }
                start += length;
            }
            this.from_server.drain(..start);
        }
        let n = this.to_client.len().min(buf.remaining());
        buf.put_slice(&this.to_client[..n]);
        this.to_client.drain(..n);
        Poll::Ready(Ok(()))
    }
}
