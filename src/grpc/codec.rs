//! gRPC codecs for bodies the relay carries as bytes, without knowing their
//! message types: the ingress reads a request as the bytes it is and
//! answers `google.protobuf.Empty` ([`BytesIn`]); delivery sends a message
//! body as the request and reads the worker's answer as nothing
//! ([`BytesOut`]). Public for the tests' and the benchmark's workers,
//! which serve as the ingress does.

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Server side: decodes a request as its bytes; encodes the empty answer
/// (`google.protobuf.Empty` encodes as no bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesIn;

impl Codec for BytesIn {
    type Encode = ();
    type Decode = Bytes;
    type Encoder = BytesIn;
    type Decoder = BytesIn;

    fn encoder(&mut self) -> Self::Encoder {
        BytesIn
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesIn
    }
}

impl Encoder for BytesIn {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, _empty: (), _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for BytesIn {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Client side: encodes a request from its bytes; reads any answer as
/// nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesOut;

impl Codec for BytesOut {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = BytesOut;
    type Decoder = BytesOut;

    fn encoder(&mut self) -> Self::Encoder {
        BytesOut
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesOut
    }
}

impl Encoder for BytesOut {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesOut {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
