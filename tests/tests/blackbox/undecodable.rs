//! Bytes that do not decode as the request message are INVALID_ARGUMENT naming where they
//! broke, on every service: never INTERNAL, which gateways retry and alerts page on.

use bytes::{Buf, BufMut};
use prost::Message;
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as pb;
use tollgate_proto::metering::v1 as metering;
use tollgate_tests::{Harness, on_both_backends};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

on_both_backends!(undecodable_requests_are_invalid_arguments);

/// Sends raw bytes as the request and throws the reply away.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Default)]
struct IgnoringDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for IgnoringDecoder {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = IgnoringDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> IgnoringDecoder {
        IgnoringDecoder
    }
}

async fn send(channel: &Channel, token: &str, path: &'static str, payload: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(payload);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    grpc.unary(request, http::uri::PathAndQuery::from_static(path), RawCodec).await.map(drop)
}

/// xorshift64*: reproducible payloads without another dependency.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Random bytes (up to 64 KiB, mostly short), or a valid message cut short or with a byte
    /// flipped.
    fn payload(&mut self, valid: &[u8]) -> Vec<u8> {
        match self.below(3) {
            0 => {
                let len = if self.below(4) == 0 { self.below(64 * 1024) } else { self.below(64) + 1 };
                (0..len).map(|_| self.next() as u8).collect()
            }
            1 => valid[..self.below(valid.len())].to_vec(),
            _ => {
                let mut bytes = valid.to_vec();
                let at = self.below(bytes.len());
                bytes[at] ^= 1 << self.below(8);
                bytes
            }
        }
    }
}

async fn undecodable_requests_are_invalid_arguments(h: &Harness) {
    let authorize = authz::AuthorizeRequest {
        api_key: "sk-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH".into(),
        model: "gpt-4o-mini".into(),
        capability: pb::Capability::Text as i32,
        client_ip: "203.0.113.7".into(),
        estimated_tokens: 1200,
        request_id: "req-1".into(),
    };
    let create_key = pb::CreateKeyRequest {
        parent: "accounts/acme".into(),
        key: Some(pb::Key {
            application: "accounts/acme/applications/chatbot".into(),
            display_name: "Production".into(),
            ip_allowlist: vec!["203.0.113.0/24".into()],
            ..Default::default()
        }),
        request_id: "create-1".into(),
        ..Default::default()
    };
    let record = metering::RecordUsageRequest {
        report: Some(metering::UsageReport {
            request_id: "req-1".into(),
            key: "accounts/acme/keys/k1".into(),
            model: "gpt-4o-mini".into(),
            input_tokens: 10,
            output_tokens: 20,
            ..Default::default()
        }),
    };
    type Decodes = fn(&[u8]) -> bool;
    let targets: [(Channel, &'static str, Vec<u8>, Decodes); 3] = [
        (h.authz_channel(), "/tollgate.authz.v1.AuthzService/Authorize", authorize.encode_to_vec(), |b| {
            authz::AuthorizeRequest::decode(b).is_ok()
        }),
        (h.channel.clone(), "/tollgate.keys.v1.KeyService/CreateKey", create_key.encode_to_vec(), |b| {
            pb::CreateKeyRequest::decode(b).is_ok()
        }),
        (h.metering_channel(), "/tollgate.metering.v1.MeteringService/RecordUsage", record.encode_to_vec(), |b| {
            metering::RecordUsageRequest::decode(b).is_ok()
        }),
    ];
    let mut bytes = Bytes(0x9e37_79b9_7f4a_7c15);
    let mut undecodable = 0;
    for (channel, path, valid, decodes) in &targets {
        for _ in 0..400 {
            let payload = bytes.payload(valid);
            let decodable = decodes(&payload);
            let outcome = send(channel, &h.admin_token, path, payload).await;
            let Err(status) = outcome else { continue };
            assert!(!matches!(status.code(), Code::Internal | Code::Unknown | Code::Unavailable), "{path}: {status:?}");
            if !decodable {
                undecodable += 1;
                assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
                assert!(status.message().contains("failed to decode"), "{path}: {status:?}");
            }
        }
    }
    assert!(undecodable > 600, "only {undecodable} payloads did not decode: the generator is off");
}
