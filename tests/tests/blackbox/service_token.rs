//! Least privilege between the services: the internal service token, which authz and
//! metering call the keys service with, opens `KeyStateService` and no management RPC. Every
//! method of every keys.v1 service is tried, read from the descriptor set, so a new RPC is
//! covered the day it is added.

use std::str::FromStr;

use http::uri::PathAndQuery;
use prost::Message;
use tollgate_tests::{Harness, on_both_backends};
use tonic::Code;

on_both_backends!(the_service_token_opens_key_state_and_no_management_rpc);

async fn the_service_token_opens_key_state_and_no_management_rpc(h: &Harness) {
    let token = h.secrets.service_token.clone().expect("the harness sets a service token");
    let set = prost_types::FileDescriptorSet::decode(tollgate_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut grpc = tonic::client::Grpc::new(h.channel.clone());
    let (mut refused, mut opened) = (0, 0);
    for file in set.file.iter().filter(|f| f.package() == "tollgate.keys.v1") {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/tollgate.keys.v1.{}/{}", service.name(), method.name());
                let mut request = tonic::Request::new(());
                request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
                grpc.ready().await.expect("ready");
                let codec = tonic_prost::ProstCodec::<(), ()>::default();
                let answer = grpc.unary(request, PathAndQuery::from_str(&path).unwrap(), codec).await;
                let code = answer.err().map_or(Code::Ok, |status| status.code());
                if service.name() == "KeyStateService" {
                    assert_ne!(code, Code::Unauthenticated, "{path}: the service token must open it");
                    opened += 1;
                } else {
                    assert_eq!(code, Code::Unauthenticated, "{path}: the service token must not open it");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(opened, 5, "every KeyStateService method was tried");
    assert!(refused >= 25, "every management method was tried ({refused})");
}
