//! Listeners per network segment: a service not listed on a listener does not
//! exist there (UNIMPLEMENTED), reflection lists only what it serves, and
//! plaintext on a non-loopback address is refused at start-up.

use crate::testkit;

use std::collections::HashSet;
use std::process::Command;

use custody_proto::v1 as pb;
use futures::StreamExt;
use tonic::Code;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// One reflection request to `addr` and its first answer.
async fn reflect(addr: &str, request: MessageRequest) -> Result<MessageResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut resp = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([req]))
        .await?
        .into_inner();
    let first = resp.next().await.expect("a reflection answer")?;
    Ok(first.message_response.expect("a message response"))
}

async fn reflected(addr: &str) -> HashSet<String> {
    match reflect(addr, MessageRequest::ListServices(String::new())).await {
        Ok(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Whether reflection on `addr` describes the file holding `symbol`.
async fn describes(addr: &str, symbol: &str) -> bool {
    match reflect(
        addr,
        MessageRequest::FileContainingSymbol(symbol.to_string()),
    )
    .await
    {
        Ok(MessageResponse::FileDescriptorResponse(f)) => !f.file_descriptor_proto.is_empty(),
        Ok(MessageResponse::ErrorResponse(_)) => false,
        Err(s) if s.code() == Code::NotFound => false,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_exposes_only_its_services() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\nname = \"cameras\"\naddr = \"127.0.0.1:0\"\nservices = [\"ingest\"]\n\n\
         [[listeners]]\nname = \"operators\"\naddr = \"127.0.0.1:0\"\nservices = [\"archive\", \"hold\"]\n",
    )
    .unwrap();
    let (_d, addrs) = testkit::start_listeners(&cfg, &tmp.path().join("data"), 2);
    let addrs: std::collections::BTreeMap<String, String> = addrs
        .into_iter()
        .map(|(n, a)| (n, format!("http://{a}")))
        .collect();
    let cameras = &addrs["cameras"];
    let operators = &addrs["operators"];

    // Reflection does not describe services a listener does not serve.
    assert!(describes(cameras, "custody.v1.IngestService").await);
    assert!(!describes(cameras, "custody.v1.ArchiveService").await);
    assert!(!describes(cameras, "custody.v1.HoldService").await);
    assert!(describes(operators, "custody.v1.ArchiveService").await);
    assert!(!describes(operators, "custody.v1.IngestService").await);

    // Ingest exists on the camera network only.
    let mut ingest_cam = pb::ingest_service_client::IngestServiceClient::connect(cameras.clone())
        .await
        .unwrap();
    let e = ingest_cam
        .put_segment(futures::stream::iter(Vec::<pb::PutSegmentRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "ingest is served on cameras: {e:?}"
    );
    let mut ingest_ops = pb::ingest_service_client::IngestServiceClient::connect(operators.clone())
        .await
        .unwrap();
    let e = ingest_ops
        .put_segment(futures::stream::iter(Vec::<pb::PutSegmentRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");

    // Archive and holds exist on the operator network only.
    let mut arch_ops = pb::archive_service_client::ArchiveServiceClient::connect(operators.clone())
        .await
        .unwrap();
    arch_ops
        .list_cameras(pb::ListCamerasRequest {})
        .await
        .unwrap();
    let mut arch_cam = pb::archive_service_client::ArchiveServiceClient::connect(cameras.clone())
        .await
        .unwrap();
    assert_eq!(
        arch_cam
            .list_cameras(pb::ListCamerasRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
    let mut holds_cam = pb::hold_service_client::HoldServiceClient::connect(cameras.clone())
        .await
        .unwrap();
    let e = holds_cam
        .list_holds(pb::ListHoldsRequest {
            include_released: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let mut policy_ops = pb::policy_service_client::PolicyServiceClient::connect(operators.clone())
        .await
        .unwrap();
    assert_eq!(
        policy_ops
            .list_policies(pb::ListPoliciesRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );

    // Reflection on each listener lists only what it serves.
    let on_cameras = reflected(cameras).await;
    assert!(
        on_cameras.contains("custody.v1.IngestService"),
        "{on_cameras:?}"
    );
    for absent in [
        "custody.v1.ArchiveService",
        "custody.v1.HoldService",
        "custody.v1.PolicyService",
        "custody.v1.RetentionService",
    ] {
        assert!(
            !on_cameras.contains(absent),
            "{absent} listed on cameras: {on_cameras:?}"
        );
    }
    let on_ops = reflected(operators).await;
    assert!(
        on_ops.contains("custody.v1.ArchiveService") && on_ops.contains("custody.v1.HoldService"),
        "{on_ops:?}"
    );
    assert!(!on_ops.contains("custody.v1.IngestService"), "{on_ops:?}");
}

#[test]
fn plaintext_on_a_non_loopback_address_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\nname = \"cameras\"\naddr = \"0.0.0.0:0\"\nservices = [\"ingest\"]\n",
    )
    .unwrap();
    let out = Command::new(testkit::CUSTODYD)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            tmp.path().join("data").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plaintext is allowed only on loopback"),
        "{err}"
    );
    assert!(
        !tmp.path().join("data/catalog").exists(),
        "refused config must not touch the data dir"
    );
}
