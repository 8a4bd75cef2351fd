//! Uploads: a client stream's chunks read as a `std::io::Read` on a blocking thread.
//!
//! The work (writing a slot, importing an image) runs on a blocking thread and reads the
//! upload through a small bounded channel, so the upload is never held in memory and a slow
//! disk slows the client down rather than filling memory.

use tonic::{Status, Streaming};

/// Runs `work` on a blocking thread over the chunks of `stream` (after its first message,
/// which the caller has taken). `chunk_of` gives a message's bytes, or `None` for a message
/// that may only come first.
pub async fn read_upload<M, T>(
    mut stream: Streaming<M>,
    chunk_of: fn(M) -> Option<Vec<u8>>,
    work: impl FnOnce(ChunkReader) -> T + Send + 'static,
) -> Result<T, Status>
where
    M: Send + 'static,
    T: Send + 'static,
{
    let (sender, chunks) = tokio::sync::mpsc::channel(8);
    let worker = tokio::task::spawn_blocking(move || {
        work(ChunkReader {
            chunks,
            current: Vec::new(),
            offset: 0,
        })
    });
    // Feed the worker until the upload ends or the worker stops listening (it failed).
    loop {
        let item = match stream.message().await {
            Ok(Some(message)) => chunk_of(message).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "options may only come in the first message",
                )
            }),
            Ok(None) => break,
            Err(status) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("the upload broke off: {}", status.message()),
            )),
        };
        let failed = item.is_err();
        if sender.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(sender);
    worker
        .await
        .map_err(|error| Status::internal(error.to_string()))
}

/// The upload's chunks, read on a blocking thread.
pub struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
    current: Vec<u8>,
    offset: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Some(Err(error)) => return Err(error),
                None => return Ok(0),
            }
        }
        let count = buffer.len().min(self.current.len() - self.offset);
        buffer[..count].copy_from_slice(&self.current[self.offset..self.offset + count]);
        self.offset += count;
        Ok(count)
    }
}
