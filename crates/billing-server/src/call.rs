//! `billing call METHOD JSON`: calls one RPC of the running service with a
//! JSON request and prints the JSON reply, using the service's own embedded
//! descriptors. A way to try the API without installing a gRPC client. A
//! streaming RPC (`WatchAccount`) prints one JSON line per message until the
//! stream ends or the command is stopped.

use std::io::Write as _;
use std::str::FromStr;

use anyhow::{Context as _, anyhow, bail};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::tls::ClientTlsArgs;

const SERVICE: &str = "billing.v1.BillingService";

/// Calls `method` at `addr` (over TLS for `https://`, as `tls` says) with
/// `json`; prints the reply, or the error.
pub async fn run(
    addr: &str,
    tls: &ClientTlsArgs,
    token: Option<&str>,
    method: &str,
    json: &str,
) -> anyhow::Result<()> {
    let pool = DescriptorPool::decode(billing_proto::v1::FILE_DESCRIPTOR_SET)?;
    let service = pool
        .get_service_by_name(SERVICE)
        .context("the service descriptor")?;
    let Some(rpc) = service.methods().find(|m| m.name() == method) else {
        let known: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
        bail!("no method {method}; the service has: {}", known.join(", "));
    };
    let mut json_in = serde_json::Deserializer::from_str(json);
    let request = DynamicMessage::deserialize(rpc.input(), &mut json_in)
        .with_context(|| format!("the request is not a {}", rpc.input().full_name()))?;

    let channel = crate::tls::client::endpoint(addr, tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| anyhow!("the channel is not ready: {e}"))?;
    let mut call = tonic::Request::new(request);
    if let Some(token) = token {
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let path = PathAndQuery::from_str(&format!("/{SERVICE}/{method}"))?;
    let codec = DynamicCodec {
        output: rpc.output(),
    };
    if rpc.is_server_streaming() {
        return stream(&mut grpc, call, path, codec).await;
    }
    match grpc.unary(call, path, codec).await {
        Ok(reply) => {
            let json = reply
                .into_inner()
                .serialize_with_options(serde_json::value::Serializer, &json_options())?;
            print_json(&json)
        }
        Err(status) => {
            eprintln!("{}", describe(&status));
            std::process::exit(if status.code() == Code::Ok { 0 } else { 1 });
        }
    }
}

/// A server-streaming call (`WatchAccount`): one JSON line per message, as
/// it arrives, until the stream ends or stdout closes.
async fn stream(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    call: tonic::Request<DynamicMessage>,
    path: PathAndQuery,
    codec: DynamicCodec,
) -> anyhow::Result<()> {
    let fail = |status: &Status| -> ! {
        eprintln!("{}", describe(status));
        std::process::exit(1);
    };
    let mut messages = match grpc.server_streaming(call, path, codec).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => fail(&status),
    };
    loop {
        match messages.message().await {
            Ok(Some(message)) => {
                let json = message
                    .serialize_with_options(serde_json::value::Serializer, &json_options())?;
                let mut stdout = std::io::stdout();
                // A closed pipe (`| head`) ends the watch; no error of ours.
                if writeln!(stdout, "{json}").is_err() || stdout.flush().is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => fail(&status),
        }
    }
}

/// The API's JSON: proto field names, 64-bit integers as numbers.
fn json_options() -> SerializeOptions {
    SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
}

/// `message` (a `billing.v1` message named `name`, e.g. `BillingAccount`)
/// as the API's JSON.
pub(crate) fn message_json(
    name: &str,
    message: &impl Message,
) -> anyhow::Result<serde_json::Value> {
    let pool = DescriptorPool::decode(billing_proto::v1::FILE_DESCRIPTOR_SET)?;
    let descriptor = pool
        .get_message_by_name(&format!("billing.v1.{name}"))
        .with_context(|| format!("no message billing.v1.{name}"))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())?;
    Ok(dynamic.serialize_with_options(serde_json::value::Serializer, &json_options())?)
}

/// Prints `json` indented on stdout.
pub(crate) fn print_json(json: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(json)?;
    // A closed pipe (`| head`) is no error of ours.
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(())
}

/// A refused call in one line: `NotFound [ACCOUNT_NOT_FOUND]: no account …`.
pub(crate) fn describe(status: &Status) -> String {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|info| format!(" [{}]", info.reason))
        .unwrap_or_default();
    format!("{:?}{reason}: {}", status.code(), status.message())
}

/// Encodes and decodes messages known only by their descriptors.
#[derive(Debug, Clone)]
struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder {
            output: self.output.clone(),
        }
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        let bytes = item.encode_to_vec();
        dst.put_slice(&bytes);
        Ok(())
    }
}

#[derive(Debug)]
struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.output.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable reply: {e}")))
    }
}
