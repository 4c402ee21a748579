//! Where the application's service descriptors come from: FileDescriptorSet
//! files, or the application's own gRPC server reflection (v1).
//!
//! The sidecar's contract (the messaging options and the well-known types)
//! is in every pool first, so a set built without `--include_imports` for
//! those still resolves.

use super::topology::TopologyError;
use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// A pool holding the sidecar's contract.
pub fn base_pool() -> DescriptorPool {
    DescriptorPool::decode(crate::proto::DESCRIPTORS)
        .expect("build.rs wrote a valid descriptor set")
}

/// The contract plus every file of `paths`.
pub fn pool_from_files(paths: &[PathBuf]) -> Result<DescriptorPool, TopologyError> {
    let mut pool = base_pool();
    for path in paths {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| TopologyError::Read {
            path: shown.clone(),
            source,
        })?;
        pool.decode_file_descriptor_set(bytes.as_slice())
            .map_err(|e| TopologyError::Decode {
                path: shown,
                reason: e.to_string(),
            })?;
    }
    Ok(pool)
}

/// Why the application's reflection could not be read (this time).
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("reflection call failed: {0}")]
    Call(#[from] tonic::Status),
    #[error("the reflection stream ended early")]
    Ended,
    #[error("unexpected reflection answer: {0}")]
    Unexpected(String),
    #[error("a file descriptor does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the application's descriptors do not resolve: {0}")]
    Pool(#[from] prost_reflect::DescriptorError),
}

/// Reads every service the application's reflection lists, with the files
/// they need, into a pool.
pub async fn pool_from_reflection(
    url: &str,
    timeout: Duration,
    pool: DescriptorPool,
) -> Result<DescriptorPool, ReflectionError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?;
    pool_from_endpoint(endpoint, timeout, pool).await
}

/// [`pool_from_reflection`] of the server at `endpoint` (with its TLS).
pub async fn pool_from_endpoint(
    endpoint: tonic::transport::Endpoint,
    timeout: Duration,
    mut pool: DescriptorPool,
) -> Result<DescriptorPool, ReflectionError> {
    let channel = endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = ServerReflectionClient::new(channel);
    let mut answers = client
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut ask = async |request: MessageRequest| -> Result<MessageResponse, ReflectionError> {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        tx.send(request).await.map_err(|_| ReflectionError::Ended)?;
        let answer: ServerReflectionResponse =
            answers.next().await.ok_or(ReflectionError::Ended)??;
        answer.message_response.ok_or(ReflectionError::Ended)
    };

    let services = match ask(MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => list.service,
        other => return Err(ReflectionError::Unexpected(format!("{other:?}"))),
    };
    // Raw bytes, as the server sent them: decoding into prost_types and
    // encoding again would drop the messaging options (extensions).
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut wanted: Vec<MessageRequest> = services
        .into_iter()
        .map(|s| MessageRequest::FileContainingSymbol(s.name))
        .collect();
    let known: HashSet<String> = pool.files().map(|f| f.name().to_owned()).collect();
    while let Some(request) = wanted.pop() {
        let MessageResponse::FileDescriptorResponse(found) = ask(request).await? else {
            continue; // e.g. a symbol the server lists but cannot describe
        };
        for bytes in found.file_descriptor_proto {
            let file = FileDescriptorProto::decode(bytes.as_slice())?;
            for dependency in &file.dependency {
                if !files.contains_key(dependency) && !known.contains(dependency) {
                    wanted.push(MessageRequest::FileByFilename(dependency.clone()));
                }
            }
            files.insert(file.name().to_owned(), bytes);
        }
    }
    tracing::debug!(files = files.len(), "read the application's descriptors");
    // Files the pool already holds (the contract, well-known types) are skipped.
    pool.decode_file_descriptor_set(encode_set(files.into_values()).as_slice())?;
    Ok(pool)
}

/// A FileDescriptorSet made of already-encoded files (field 1, repeated),
/// so that their options reach the pool intact, in any order.
fn encode_set(files: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut set = Vec::new();
    for file in files {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut set);
        prost::encoding::encode_varint(file.len() as u64, &mut set);
        set.extend_from_slice(&file);
    }
    set
}
