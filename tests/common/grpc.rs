//! gRPC helpers shared by the ingress tests and the fault suite: a client
//! that sends raw bytes to any path, and bytes that are not gRPC at all.

use bytes::{Buf, BufMut, Bytes};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A unary call of `path` with `request` as the encoded message; the answer
/// must be `google.protobuf.Empty`.
pub async fn call_raw(channel: Channel, path: &str, request: Request<Bytes>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = path.parse().expect("a request path");
    grpc.unary(request, path, RawClientCodec).await.map(|_| ())
}

#[derive(Debug, Clone, Copy, Default)]
struct RawClientCodec;

impl Codec for RawClientCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawClientCodec;
    type Decoder = RawClientCodec;
    fn encoder(&mut self) -> Self {
        RawClientCodec
    }
    fn decoder(&mut self) -> Self {
        RawClientCodec
    }
}

impl Encoder for RawClientCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawClientCodec {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// Bytes that are not a gRPC call: HTTP/1, a broken HTTP/2 preface, zeros,
/// random bytes, and a valid preface followed by a HEADERS frame whose HPACK
/// block is junk.
pub fn garbage() -> Vec<Vec<u8>> {
    let mut bad_headers =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    bad_headers
        .extend_from_slice(b"\x00\x00\x08\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff");
    vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x04\x00\x00\x00\x00\x00garbage".to_vec(),
        vec![0u8; 256 << 10],
        (0..64 << 10).map(|_| fastrand::u8(..)).collect(),
        bad_headers,
    ]
}

/// Writes `bytes` to a new connection to `addr` and reads until the server
/// closes it; true when it did so within `within` (it answers an error or a
/// GOAWAY, or just closes: either way it does not hang on to the connection).
pub async fn closes_garbage(addr: SocketAddr, bytes: &[u8], within: Duration) -> bool {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the gRPC port");
    // The server may close before taking every byte: that is an answer too.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .is_ok()
}
