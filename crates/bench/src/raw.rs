//! A bare HTTP/2 gRPC client for the load generator: request bodies are encoded once, only
//! the request id is appended per call, and responses are not decoded beyond the decision.
//! The generator shares the machine's two cores with the servers, so every microsecond it
//! spends is one the servers cannot; a lean generator measures the servers, not itself.

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{Method, Request};
use tokio::net::TcpStream;

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct RawClient {
    sender: SendRequest<Bytes>,
    authority: String,
}

/// A request message encoded without its request id, and the field the id goes in.
#[derive(Clone)]
pub struct Template {
    /// The encoded AuthorizeRequest, request id left out.
    pub message: Bytes,
    /// Wrapped in field 1 of another message (the bench service's requests)?
    pub wrapped: bool,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    Denied,
    Failed,
}

const REQUEST_ID_FIELD: u8 = (6 << 3) | 2;
const WRAPPER_FIELD: u8 = (1 << 3) | 2;

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - value.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The gRPC frame of `template` with `request_id` appended (protobuf allows any field order).
pub fn frame(template: &Template, request_id: &[u8]) -> Bytes {
    let inner_len = template.message.len() + 1 + varint_len(request_id.len() as u64) + request_id.len();
    let outer_len = if template.wrapped { 1 + varint_len(inner_len as u64) + inner_len } else { inner_len };
    let mut buf = BytesMut::with_capacity(5 + outer_len);
    buf.put_u8(0);
    buf.put_u32(outer_len as u32);
    if template.wrapped {
        buf.put_u8(WRAPPER_FIELD);
        put_varint(&mut buf, inner_len as u64);
    }
    buf.put_slice(&template.message);
    buf.put_u8(REQUEST_ID_FIELD);
    put_varint(&mut buf, request_id.len() as u64);
    buf.put_slice(request_id);
    buf.freeze()
}

impl RawClient {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake(tcp)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, authority: format!("127.0.0.1:{port}") })
    }

    /// Sends one unary gRPC call; an allowed Authorize answers with decision 1 in field 1.
    pub async fn call(&mut self, path: &str, body: Bytes) -> Answer {
        match self.try_call(path, body).await {
            Ok(answer) => answer,
            Err(_) => Answer::Failed,
        }
    }

    async fn try_call(&mut self, path: &str, body: Bytes) -> anyhow::Result<Answer> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let mut sender = self.sender.clone().ready().await?;
        let (response, mut stream) = sender.send_request(request, false)?;
        stream.send_data(body, true)?;
        let response = response.await?;
        let mut body = response.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        let ok = trailers.as_ref().and_then(|t| t.get("grpc-status")).is_some_and(|status| status == "0");
        if !ok {
            return Ok(Answer::Failed);
        }
        // 5-byte gRPC prefix, then field 1: the decision (Authorize: 2 is a deny), the wrapped
        // response, or Check's status (empty for OK, a code otherwise).
        let check = path.ends_with("/Check");
        Ok(match message.get(5..7) {
            Some([0x08, 0x02]) => Answer::Denied,
            Some([0x0a, length]) if check && *length > 0 => Answer::Denied,
            _ => Answer::Allowed,
        })
    }
}

/// One keep-alive HTTP/1.1 connection, one request at a time: what a proxy's forward-auth
/// sub-request is. Allowed is 200, denied 4xx, anything else failed.
pub struct Http1Client {
    port: u16,
    /// `None` after a failure: the next call connects again.
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Http1Client {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let mut client = Self { port, stream: None, buffer: Vec::with_capacity(4096) };
        client.reconnect().await?;
        Ok(client)
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.set_nodelay(true)?;
        self.stream = Some(stream);
        self.buffer.clear();
        Ok(())
    }

    /// Sends a whole request (head and body) and reads the answer.
    pub async fn call(&mut self, request: &[u8]) -> Answer {
        match self.try_call(request).await {
            Ok(200) => Answer::Allowed,
            Ok(status) if (400..500).contains(&status) => Answer::Denied,
            Ok(_) => Answer::Failed,
            Err(_) => {
                self.stream = None;
                Answer::Failed
            }
        }
    }

    async fn try_call(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.stream.is_none() {
            self.reconnect().await?;
        }
        let stream = self.stream.as_mut().context("not connected")?;
        stream.write_all(request).await?;
        loop {
            if let Some(head_end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..head_end])?;
                let status: u16 = head.split(' ').nth(1).context("no status")?.parse()?;
                let length: usize = head
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .map_or(Ok(0), |(_, value)| value.trim().parse())?;
                let end = head_end + 4 + length;
                if self.buffer.len() >= end {
                    self.buffer.drain(..end);
                    return Ok(status);
                }
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            anyhow::ensure!(read > 0, "connection closed");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tollgate_proto::authz::v1 as authz;
    use tollgate_proto::bench::v1 as bench;

    #[test]
    fn frames_decode_as_the_full_message() {
        let request = authz::AuthorizeRequest { api_key: "sk-x".into(), model: "m".into(), ..Default::default() };
        let plain = Template { message: request.encode_to_vec().into(), wrapped: false };
        let framed = frame(&plain, b"req-300");
        let decoded = authz::AuthorizeRequest::decode(&framed[5..]).unwrap();
        assert_eq!(decoded, authz::AuthorizeRequest { request_id: "req-300".into(), ..request.clone() });
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, framed.len() - 5);

        let wrapped = Template { message: request.encode_to_vec().into(), wrapped: true };
        let framed = frame(&wrapped, &[b'x'; 200]);
        let decoded = bench::NoopRequest::decode(&framed[5..]).unwrap();
        assert_eq!(decoded.request.unwrap().request_id, "x".repeat(200));
    }
}
